"""Device meshes: the ``mesh`` field of a :class:`~benchmarks.suites.Case`, and running a
case whose mesh spans several devices.

``--mesh data=2,model=2[,fsdp]`` adds, for each train-step row of a run, the same row on
that mesh: our encoder given to ``parallel.parallelize`` (the shared plan of
``shared/parallel.py``), the batch split along ``data``, the same train step, timed by the
same harness (``benchmarks.harness.measure``) into the same :class:`~benchmarks.schema.Row`.
``seq=N`` splits the sequence over N devices (context parallelism: every layer's attention
runs over them, ``context=ring``, the default, or ``context=all_gather``; PyTorch's ranks
take their rows of the sequence with ``parallel.slice_sequence``).
Only the process layout differs, because a framework must be started for it:

* JAX: one child process whose device count is set before JAX starts (on a CPU,
  ``--xla_force_host_platform_device_count``; on GPUs and TPUs, the devices present);
* PyTorch: one process per device, started by ``torch_impl.parallel.launch`` (gloo on a CPU,
  NCCL on GPUs); every rank times the same calls (a fixed number: collectives need every
  rank in step) and rank 0 reports.

Host devices of one CPU share its cores: on a CPU, mesh rows show the overhead of the
sharded program, not a speedup.

This module needs neither torch nor JAX until a case runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared import parallel as plan

__all__ = ["CONTEXTS", "MESH_AXES", "MeshSpec", "parse_mesh", "run_sharded"]

MESH_AXES: tuple[str, ...] = plan.AXES  # the axes parallel.make_mesh takes, in its order
_REPO = Path(__file__).resolve().parent.parent
# the same fixed number of timed calls on every rank: larger than any budget could allow
_NO_BUDGET_S = 1e18
CONTEXTS = ("ring", "all_gather")  # context parallelism's methods (torch_impl/jax_impl context.py)
CHILD_TIMEOUT_S = 1800  # a mesh row's child processes are ended after this long


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """A device mesh: ``{axis: size}`` over :data:`MESH_AXES` (absent axes have size 1), and
    whether parameters are also sharded along ``data`` (FSDP). ``MeshSpec()`` is one device."""

    axes: tuple[tuple[str, int], ...] = ()  # (axis, size > 1), in MESH_AXES order
    fsdp: bool = False
    context: str = "ring"  # context parallelism's method on a seq axis > 1

    @classmethod
    def of(
        cls, sizes: Mapping[str, int] | None = None, *, fsdp: bool = False, context: str = "ring"
    ) -> MeshSpec:
        """From a mapping ``{axis: size}``; ``ValueError`` for an unknown axis, a size < 1 or
        a context method other than those of :data:`CONTEXTS`."""
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        sizes = dict(sizes or {})
        unknown = sorted(set(sizes) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"mesh axes must be among {', '.join(MESH_AXES)}, got {unknown}")
        bad = {a: n for a, n in sizes.items() if not isinstance(n, int) or n < 1}
        if bad:
            raise ValueError(f"mesh sizes must be integers >= 1, got {bad}")
        axes = tuple((a, sizes[a]) for a in MESH_AXES if sizes.get(a, 1) > 1)
        return cls(axes, fsdp, context if sizes.get("seq", 1) > 1 else "ring")

    @property
    def sizes(self) -> dict[str, int]:
        """Every axis of :data:`MESH_AXES` with its size (1 where absent)."""
        given = dict(self.axes)
        return {a: given.get(a, 1) for a in MESH_AXES}

    @property
    def devices(self) -> int:
        n = 1
        for size in self.sizes.values():
            n *= size
        return n

    @property
    def name(self) -> str:
        """``"data=2,model=2,fsdp"``, ``"seq=2,context=ring"``; empty for one device."""
        parts = [f"{a}={n}" for a, n in self.axes] + (["fsdp"] if self.fsdp else [])
        if self.sizes["seq"] > 1:
            parts.append(f"context={self.context}")
        return ",".join(parts)


def parse_mesh(text: str) -> MeshSpec:
    """``"data=2,model=2"``, ``"data=2,fsdp"``, ``"seq=2,context=all_gather"`` ->
    :class:`MeshSpec` (an argparse type)."""
    sizes: dict[str, int] = {}
    fsdp = False
    context = "ring"
    expected = ",".join(f"{a}=N" for a in MESH_AXES) + "[,fsdp][,context=ring|all_gather]"
    for part in (p.strip() for p in text.split(",") if p.strip()):
        axis, _, value = part.partition("=")
        if axis == "fsdp" and not value:
            fsdp = True
        elif axis == "context" and value in CONTEXTS:
            context = value
        elif axis in MESH_AXES and value.isdigit() and int(value) >= 1:
            sizes[axis] = int(value)
        else:
            raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected {expected}, got {part!r}")
    return MeshSpec.of(sizes, fsdp=fsdp, context=context)


def collective_bytes(cfg, mesh: MeshSpec, *, batch: int, seq_len: int) -> int | None:
    """Analytic bytes a train step hands to collectives, per device (None on one device):
    ``shared.parallel.collective_bytes``, plus ``context_bytes`` on a seq axis > 1 (float32;
    positions counted as int64, PyTorch's: JAX sends int32 ones, 4 bytes a position less)."""
    if mesh.devices == 1:
        return None
    sizes = mesh.sizes
    kinds = plan.collective_bytes(
        cfg,
        batch=batch,
        seq_len=seq_len,
        data=sizes["data"],
        model=sizes["model"],
        fsdp=mesh.fsdp,
        seq=sizes["seq"],
    )
    context = plan.context_bytes(
        cfg,
        batch=batch,
        seq_len=seq_len,
        seq=sizes["seq"],
        method=mesh.context,
        data=sizes["data"],
        model=sizes["model"],
    )
    return int(sum(kinds.values()) + sum(context.values()))


def check(mesh: MeshSpec, cfg, batch: int, seq_len: int | None = None) -> None:
    """``ValueError`` when ``batch``, ``seq_len`` or ``cfg`` cannot be split over ``mesh``
    (PyTorch's context parallelism also refuses ``fsdp`` and image models)."""
    plan.check_batch(batch, mesh.sizes["data"])
    plan.check_model_split(cfg, mesh.sizes["model"])
    if mesh.sizes["seq"] > 1:
        if seq_len is not None:
            plan.check_seq_split(seq_len, mesh.sizes["seq"])
        if mesh.fsdp:
            raise ValueError(
                "PyTorch's context parallelism sums gradients over seq by parameter hooks, "
                "which FSDP's sharded parameters bypass: expected no fsdp with seq > 1"
            )
        if cfg.image_size:
            raise ValueError(
                "context parallelism splits token sequences: expected a text model with "
                f"seq > 1, got an image model (image_size={cfg.image_size})"
            )


# --- running a case on a mesh -----------------------------------------------------------------


def run_sharded(case, cfg, settings) -> tuple[Any, list[str]]:
    """Measure ``case`` (its mesh spans several devices) in child processes:
    ``(Measurement, notes)`` as :func:`benchmarks.runner.measure_case` returns them."""
    payload = json.dumps(
        {
            "case": {**dataclasses.asdict(case), "mesh": case.mesh.name},
            "cfg": cfg.to_json(),
            "settings": {
                **dataclasses.asdict(settings),
                "budget_s": _NO_BUDGET_S,
                "threads": max(1, (settings.threads or 1) // case.mesh.devices)
                if case.device == "cpu"
                else settings.threads,
            },
        }
    )
    record = _run_jax(payload, case) if case.framework == "jax" else _run_torch(payload, case)
    return _measurement(record["measurement"]), record["notes"]


def _measurement(data: dict[str, Any]):
    from benchmarks.harness import Measurement, Stats

    return Measurement(**{**data, "stats": Stats(**data["stats"])})


def _child_setup(payload: str, framework: str):
    """In a child: the case, config, settings and one runner, set up as the parent's."""
    from benchmarks import environment
    from benchmarks.runner import RunSettings
    from benchmarks.suites import Case
    from shared.config import EncoderConfig

    p = json.loads(payload)
    settings = RunSettings(**p["settings"])
    case = Case(**{**p["case"], "mesh": parse_mesh(p["case"]["mesh"])})
    if settings.cache_dir:
        environment.prepare_process(Path(settings.cache_dir))
    modules, skipped = environment.import_frameworks((framework,))
    if skipped:
        raise RuntimeError(skipped[framework])
    environment.configure_precision(modules, tf32=settings.tf32)
    if settings.cache_dir:
        environment.configure_compile_cache(modules, Path(settings.cache_dir))
    return case, EncoderConfig.from_json(p["cfg"]), settings


def _result(case, cfg, settings, runner) -> str:
    from benchmarks.runner import make_input_ids, measure_case
    from shared import reference

    weights = reference.init_weights(cfg, settings.seed)
    ids = make_input_ids(cfg, case.batch, case.seq_len, settings.seed)
    m, notes = measure_case(case, cfg, weights, ids, runner, settings)
    return json.dumps({"measurement": dataclasses.asdict(m), "notes": notes})


def _run_jax(payload: str, case) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    if case.device == "cpu":
        flag = f"--xla_force_host_platform_device_count={case.mesh.devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    code = "import sys; from benchmarks.mesh import jax_child; print(jax_child(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, payload],
        env=env,
        cwd=_REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"jax on mesh {case.mesh.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def jax_child(payload: str) -> str:
    """Measure the case in this process, whose JAX already sees the mesh's devices."""
    case, cfg, settings = _child_setup(payload, "jax")
    from benchmarks.run_jax import JaxRunner

    return _result(case, cfg, settings, JaxRunner(case.device))


def _run_torch(payload: str, case) -> dict:
    from torch_impl import parallel

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rank0.json"
        parallel.launch(
            torch_rank,
            case.mesh.devices,
            payload,
            str(result),
            backend="nccl" if case.device == "gpu" else "gloo",
            timeout_s=CHILD_TIMEOUT_S,
        )
        return json.loads(result.read_text())


def torch_rank(rank: int, payload: str, result_path: str) -> None:
    """One rank: measure the case (every rank makes the same calls); rank 0 writes."""
    case, cfg, settings = _child_setup(payload, "torch")
    from benchmarks.run_torch import TorchRunner

    text = _result(case, cfg, settings, TorchRunner(case.device, threads=settings.threads))
    if rank == 0:
        Path(result_path).write_text(text)
