"""``python -m benchmarks --mesh data=2,model=2``: the sharded train step, timed per mesh.

Each mesh runs the train step users train with (``Trainer.step`` of ``*_impl/train.py`` on
a model given to ``parallel.parallelize``), on a per-sequence task, next to the same step on
one device. JAX runs in a child process whose device count is set before JAX starts (on a
CPU: ``--xla_force_host_platform_device_count``; on GPUs and TPUs: the devices present);
PyTorch runs in ``data x model`` processes started by ``torch_impl.parallel.launch`` (gloo on
CPU, NCCL on GPUs).

Rows record the mesh, the devices, the per-device batch, the median step time, tokens/s in
total and per device, the peak memory per device, and the analytic bytes each step hands to
collectives (``shared.parallel.collective_bytes``). Host devices of one CPU share its cores:
on a CPU the rows show the overhead of the sharded program, not a speedup.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared import parallel as plan
from shared.config import EncoderConfig
from shared.data import Dataset, TaskConfig
from shared.training import TrainConfig

__all__ = ["MeshSpec", "parse_mesh", "run"]

TRAIN = TrainConfig(learning_rate=1e-4, warmup_steps=0, total_steps=10**6, max_grad_norm=1.0)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """A mesh to benchmark: ``data x model`` devices, parameters sharded along data if fsdp."""

    data: int = 1
    model: int = 1
    fsdp: bool = False

    @property
    def devices(self) -> int:
        return self.data * self.model

    @property
    def name(self) -> str:
        return f"data={self.data},model={self.model}" + (",fsdp" if self.fsdp else "")


def parse_mesh(text: str) -> MeshSpec:
    """``"data=2,model=2"``, ``"data=2,fsdp"`` -> :class:`MeshSpec` (argparse type)."""
    fields: dict[str, int | bool] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, value = part.partition("=")
        if key == "fsdp" and not value:
            fields["fsdp"] = True
        elif key in ("data", "model") and value.isdigit() and int(value) >= 1:
            fields[key] = int(value)
        else:
            raise argparse.ArgumentTypeError(
                f"--mesh {text!r}: expected data=N,model=M[,fsdp], got {part!r}"
            )
    return MeshSpec(**fields)


def run(
    meshes: Sequence[MeshSpec],
    *,
    cfg: EncoderConfig,
    config_name: str,
    frameworks: Sequence[str],
    device: str,
    batch: int,
    seq_len: int,
    warmup: int,
    repeats: int,
    out: Path,
    plots: bool,
) -> int:
    """Every framework on a one-device baseline and on each mesh; rows to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    work = {"batch": batch, "seq_len": seq_len, "warmup": warmup, "repeats": repeats}
    for framework in frameworks:
        for mesh in (MeshSpec(), *meshes):
            print(f"{framework} {mesh.name} ...", file=sys.stderr, flush=True)
            plan.check_batch(batch, mesh.data)
            plan.check_model_split(cfg, mesh.model)
            args = (cfg.to_json(), mesh.data, mesh.model, mesh.fsdp, json.dumps(work), device)
            record = _run_jax(*args) if framework == "jax" else _run_torch(*args)
            rows.append(_row(framework, mesh, cfg, config_name, device, batch, seq_len, record))
    _write(rows, out, plots)
    return 0


def _row(framework, mesh, cfg, config_name, device, batch, seq_len, record) -> dict:
    tokens = batch * seq_len
    step_s = record["median_s"]
    return {
        "framework": framework,
        "config": config_name,
        "device": device,
        "mesh": mesh.name,
        "data": mesh.data,
        "model": mesh.model,
        "fsdp": mesh.fsdp,
        "devices": mesh.devices,
        "batch": batch,
        "per_device_batch": batch // mesh.data,
        "seq_len": seq_len,
        "median_ms": 1e3 * step_s,
        "iqr_ms": 1e3 * record["iqr_s"],
        "tokens_per_s": tokens / step_s,
        "tokens_per_s_per_device": tokens / step_s / mesh.devices,
        "peak_bytes_per_device": record["peak_bytes"],
        "memory_method": record["memory_method"],
        **{
            f"collective_{k}_bytes": v
            for k, v in plan.collective_bytes(
                cfg, batch=batch, seq_len=seq_len, data=mesh.data, model=mesh.model, fsdp=mesh.fsdp
            ).items()
        },
        "losses": record["losses"],
    }


def _task(cfg: EncoderConfig, seq_len: int) -> TaskConfig:
    return TaskConfig(task="first_last", vocab_size=cfg.vocab_size, seq_len=seq_len)


# --- JAX: one child process with the mesh's device count -------------------------------------


def _run_jax(cfg_json, data, model, fsdp, work_json, device) -> dict:
    env = dict(os.environ)
    if device == "cpu":
        flag = f"--xla_force_host_platform_device_count={data * model}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    code = (
        "import sys, json; from benchmarks.mesh import jax_worker; "
        "print(json.dumps(jax_worker(*json.loads(sys.argv[1]))))"
    )
    payload = json.dumps([cfg_json, data, model, fsdp, work_json])
    done = subprocess.run(
        [sys.executable, "-c", code, payload], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"jax mesh data={data},model={model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def jax_worker(cfg_json: str, data: int, model: int, fsdp: bool, work_json: str) -> dict:
    """Time the sharded train step of jax_impl/train.py in this process (JAX already sized)."""
    import jax
    from flax import nnx

    import jax_impl.precision
    import jax_impl.train as jt
    from jax_impl import parallel

    jax_impl.precision.set_matmul_precision("float32")
    cfg, work = EncoderConfig.from_json(cfg_json), json.loads(work_json)
    mesh = parallel.make_mesh(data=data, model=model)
    model_ = jt.build_model(cfg, _task(cfg, work["seq_len"]), rngs=nnx.Rngs(0))
    trainer = jt.Trainer(parallel.parallelize(model_, mesh, fsdp=fsdp), TRAIN)
    dataset = Dataset(_task(cfg, work["seq_len"]), batch_size=work["batch"], seed=0)
    batches = [parallel.place_batch(dataset.batch(i), mesh) for i in range(2)]
    times, losses = _time_steps(lambda i: trainer.step([batches[i % 2]]), work)
    compiled = trainer._train_step.lower(
        trainer.params, trainer.rest, trainer.opt_state, [batches[0]], jax.numpy.float32(1.0)
    ).compile()
    stats = compiled.memory_analysis()
    peak = None
    if stats is not None:
        peak = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
    return {**_summary(times, losses), "peak_bytes": peak, "memory_method": "xla_buffer_assignment"}


# --- PyTorch: data x model processes ---------------------------------------------------------


def _run_torch(cfg_json, data, model, fsdp, work_json, device) -> dict:
    import tempfile

    from torch_impl import parallel

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rank0.json"
        backend = "nccl" if device == "gpu" else "gloo"
        parallel.launch(
            torch_worker,
            data * model,
            cfg_json,
            data,
            model,
            fsdp,
            work_json,
            str(result),
            backend=backend,
            timeout_s=1800,
        )
        return json.loads(result.read_text())


def torch_worker(rank, cfg_json, data, model, fsdp, work_json, result_path) -> None:
    """Time the sharded train step of torch_impl/train.py on this rank; rank 0 writes."""
    import torch

    import torch_impl.precision
    import torch_impl.train as tt
    from benchmarks.harness import PeakRss
    from torch_impl import parallel

    torch_impl.precision.set_matmul_precision("float32")
    cfg, work = EncoderConfig.from_json(cfg_json), json.loads(work_json)
    mesh = parallel.make_mesh(data=data, model=model)
    torch.manual_seed(0)
    model_ = tt.build_model(cfg, _task(cfg, work["seq_len"]))
    if mesh.device_type == "cuda":
        model_ = model_.cuda()
    trainer = tt.Trainer(parallel.parallelize(model_, mesh, fsdp=fsdp), TRAIN)
    dataset = Dataset(_task(cfg, work["seq_len"]), batch_size=work["batch"], seed=0)
    batches = [parallel.slice_batch(dataset.batch(i), mesh) for i in range(2)]
    times, losses = _time_steps(lambda i: trainer.step([batches[i % 2]]), work)
    if mesh.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        trainer.step([batches[0]])
        peak, method = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        with PeakRss() as rss:
            trainer.step([batches[0]])
        state = _local_bytes(trainer)
        peak = None if rss.peak_bytes is None else rss.peak_bytes + state
        method = "rss_sampled growth in one step + local parameter, gradient, optimizer bytes"
    if rank == 0:
        record = {**_summary(times, losses), "peak_bytes": peak, "memory_method": method}
        Path(result_path).write_text(json.dumps(record))


def _local_bytes(trainer) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (its shards only)."""
    from torch.distributed.tensor import DTensor

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    tensors = [local(p) for p in trainer.model.parameters()]
    tensors += [local(p.grad) for p in trainer.model.parameters() if p.grad is not None]
    for state in trainer.optimizer.state.values():
        tensors += [local(v) for v in state.values() if hasattr(v, "numel") and v.dim() > 0]
    return sum(t.numel() * t.element_size() for t in tensors)


# --- timing, shared by both ------------------------------------------------------------------


def _time_steps(step, work: dict) -> tuple[list[float], list[float]]:
    """``warmup`` untimed steps, then ``repeats`` timed ones (each returns a host float, so
    the device has finished when it returns)."""
    losses = []
    for i in range(work["warmup"]):
        losses.append(step(i)[0])
    times = []
    for i in range(work["repeats"]):
        t0 = time.perf_counter()
        loss, _ = step(work["warmup"] + i)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    return times, losses


def _summary(times: list[float], losses: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "losses": losses}


# --- output ----------------------------------------------------------------------------------

NOTE = (
    "Host devices of one CPU share its cores: CPU rows show the overhead of the sharded "
    "program against one device on the same cores, not a speedup. Collective bytes are "
    "analytic payloads per device and step (shared/parallel.py)."
)


def _write(rows: list[dict], out: Path, plots: bool) -> None:
    (out / "mesh_results.json").write_text(json.dumps({"note": NOTE, "rows": rows}, indent=1))
    fields = [k for k in rows[0] if k != "losses"]
    with open(out / "mesh_results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    header = f"{'framework':9} {'mesh':22} {'dev':>3} {'B/dev':>5} {'ms':>9} {'tok/s':>10} "
    header += f"{'tok/s/dev':>10} {'MiB/dev':>8} {'TP MB':>7} {'DP MB':>7}"
    print(header)
    for r in rows:
        mib = r["peak_bytes_per_device"]
        print(
            f"{r['framework']:9} {r['mesh']:22} {r['devices']:3d} {r['per_device_batch']:5d} "
            f"{r['median_ms']:9.2f} {r['tokens_per_s']:10,.0f} {r['tokens_per_s_per_device']:10,.0f} "
            f"{'-' if mib is None else f'{mib / 2**20:8.1f}':>8} "
            f"{r['collective_tp_activations_bytes'] / 1e6:7.2f} "
            f"{r['collective_dp_gradients_bytes'] / 1e6:7.2f}"
        )
    print(NOTE)
    if plots:
        _plot(rows, out / "scaling.png")


def _plot(rows: list[dict], path: Path) -> None:
    """Tokens/s and memory per device against devices, one line per framework and kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[dict]] = {}
    for r in rows:
        kind = (
            "fsdp"
            if r["fsdp"]
            else "data"
            if r["model"] == 1
            else "model"
            if r["data"] == 1
            else "data x model"
        )
        if r["devices"] == 1:
            for k in ("data", "model", "data x model", "fsdp"):
                series.setdefault(f"{r['framework']} {k}", []).append(r)
        else:
            series.setdefault(f"{r['framework']} {kind}", []).append(r)
    for label, points in sorted(series.items()):
        if len(points) < 2:
            continue
        points.sort(key=lambda r: r["devices"])
        x = [r["devices"] for r in points]
        left.plot(x, [r["tokens_per_s"] for r in points], marker="o", label=label)
        mem = [r["peak_bytes_per_device"] for r in points]
        if all(m is not None for m in mem):
            right.plot(x, [m / 2**20 for m in mem], marker="o", label=label)
    left.set(xlabel="devices", ylabel="tokens/s (total)", title="throughput")
    right.set(xlabel="devices", ylabel="MiB per device", title="peak memory per device")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"train step, {rows[0]['config']}, {rows[0]['device']} (CPU: shared cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
