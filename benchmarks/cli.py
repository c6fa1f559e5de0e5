"""``python -m benchmarks``: the command line.

Arguments are checked before torch or JAX is imported (``--help`` imports neither): a usage
error costs no set-up and prints one line. Exit status: 0 when every row ran; 1 when a row
failed or no framework could be imported (results are written all the same); 2 for a usage
error, including a device that is not present; 130 when interrupted (what was measured so
far is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import environment, peers
from benchmarks import mesh as meshes
from benchmarks.mesh import parse_mesh
from benchmarks.suites import (
    DEVICES,
    DTYPES,
    FRAMEWORKS,
    MODES,
    PRESETS,
    SUITES,
    Case,
    Selection,
    expand,
    load_config,
    max_len_for,
    with_layers,
)
from benchmarks.variants import REGISTRY, VARIANTS
from shared.atomic import check_output_folder
from shared.backends import REMATS
from shared.flops import PHASES

__all__ = ["build_parser", "main"]

DEFAULT_OUT = "bench-out"


def _list_of(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {', '.join(choices)}"
            )
        return tuple(dict.fromkeys(values))

    return parse


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 128,512")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one positive integer")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
    return value


_EPILOG = """\
suites:
{suites}

config presets (--config): {presets}
  or the path of a JSON file of EncoderConfig fields (dropout should be 0).

variants (--variants):
{variants}

Every torch/jax pair (same variant, dtype and shape) is first run on the same weights and
inputs, and each row records the max abs difference of the two outputs. Mode eager or
compiled (torch.compile per shape / jax.jit of the pure function from nnx.split); phase
forward, forward_backward, train_step (AdamW). Under torch.compile, Inductor replaces the
math variant's written-out attention with SDPA: compiled math rows name that kernel.

Writes OUT/results.json (environment + rows), OUT/results.csv (rows) and OUT/*.png.
Progress (with an estimate of the time left) goes to stderr; the table and a verdict per
phase to stdout. Exit status: 0 ok, 1 a row failed, 2 usage error (an unknown or absent
device included), 130 interrupted.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    suites = "\n".join(
        f"  {s.name:9} {s.description} (config {s.config}; {len(s.dtypes)} dtype(s))"
        for s in SUITES.values()
    )
    variants = "\n".join(f"  {v.name:11} {v.description}" for v in REGISTRY.values())
    parser = _Parser(
        prog="python -m benchmarks",
        description=(
            "Time the same, parity-checked Transformer encoder in PyTorch and JAX/Flax NNX "
            "on CPU, GPU or TPU, and write a table, JSON, CSV and plots."
        ),
        epilog=_EPILOG.format(suites=suites, presets=", ".join(PRESETS), variants=variants),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        choices=("auto", *DEVICES),
        default="auto",
        help="where to run; auto (default) picks gpu, then tpu, then cpu. A device that is "
        "not present exits with status 2 and names the devices that are.",
    )
    parser.add_argument(
        "--suite",
        choices=tuple(SUITES),
        default="quick",
        help="what to run (default quick: 28 rows on a CPU, 5-6 minutes on 2 busy cores); "
        "see below",
    )
    parser.add_argument(
        "--config",
        metavar="NAME|FILE",
        help="model: a preset name or a JSON file of EncoderConfig fields (default: the suite's)",
    )
    parser.add_argument(
        "--layers",
        type=_positive_int,
        metavar="N",
        help="keep the config's first N layers (and its layer pattern); rows name the config "
        "NAME-N-layers",
    )
    parser.add_argument(
        "--frameworks",
        type=_list_of(FRAMEWORKS),
        default=FRAMEWORKS,
        metavar="LIST",
        help="comma-separated, from torch,jax (default both; one that cannot be imported is "
        "skipped with a note)",
    )
    parser.add_argument(
        "--dtype",
        type=_list_of(DTYPES),
        metavar="LIST",
        help="parameter and activation dtypes, from float32,bfloat16 (default: the suite's)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        metavar="N",
        help="one batch size for every shape (default: the suite's rule, about a fixed number "
        "of tokens per call, so long sequences get smaller batches)",
    )
    parser.add_argument(
        "--seq-lens",
        type=_positive_ints,
        metavar="LIST",
        help="comma-separated sequence lengths, e.g. 128,512 (default: the suite's)",
    )
    parser.add_argument(
        "--variants",
        type=_list_of(VARIANTS),
        metavar="LIST",
        help=f"from {','.join(VARIANTS)}. Giving --variants, --modes or --phases "
        "replaces the suite's sweeps by their cross product (the suite's values filling in "
        "the ones not given)",
    )
    parser.add_argument("--modes", type=_list_of(MODES), metavar="LIST", help="from eager,compiled")
    parser.add_argument(
        "--remat",
        type=_list_of(REMATS),
        metavar="LIST",
        help=f"activation checkpointing, from {','.join(REMATS)} (default none): each row "
        "with a backward of an ours-* variant runs once per policy, recorded in the row's "
        "remat field; forward rows and other variants run once, without",
    )
    parser.add_argument(
        "--phases",
        type=_list_of(PHASES),
        metavar="LIST",
        help="from forward,forward_backward,train_step",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        metavar="N",
        help="timed calls per row (default: the suite's); fewer, but at least 3, when one "
        "call is so slow that N of them would exceed --time-budget",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        metavar="N",
        help="untimed calls per row after compilation (default: the suite's). One untimed "
        "call, profiled to name the attention kernel, always runs, and one more measures memory",
    )
    parser.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="aim for at most this many seconds of timed calls per row (default: the suite's)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="torch intra-op threads (default: all usable cores; XLA always uses all of them)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="GPU only: float32 matmuls in TF32 in both frameworks (default: true float32 in "
        "both; JAX's own default on GPUs would be TF32 and PyTorch's float32, an unfair pair)",
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of weights and inputs (default 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="DIR",
        help=f"output folder (default {DEFAULT_OUT}/, which git ignores)",
    )
    parser.add_argument(
        "--mesh",
        type=parse_mesh,
        action="append",
        default=[],
        metavar=",".join(f"{a}=N" for a in meshes.MESH_AXES) + "[,fsdp][,context=ring|all_gather]",
        help="also run every train-step row of the selection on this device mesh "
        "(repeatable); everything else (config, shapes, repeats) stays the suite's. "
        "`--suite mesh` is a one-shape train step made for it. On a CPU, JAX gets N*M host "
        "devices and PyTorch N*M gloo processes sharing the cores (overhead, not speedup); "
        "on GPUs, the GPUs present",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the rows that would run, and stop (frameworks are still imported, to "
        "find the devices)",
    )
    return parser


class UsageError(ValueError):
    """A command line that cannot run (exit status 2, one line)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m benchmarks`` with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    try:
        check_output_folder(args.out)
        config_name, cfg = load_config(args.config or suite.config)
        if args.layers is not None:
            config_name, cfg = f"{config_name}-{args.layers}-layers", with_layers(cfg, args.layers)
        selection = _selection(args, device=args.device, frameworks=args.frameworks)
        if args.device != "auto":
            _check(args, suite, cfg, selection)
        elif args.batch is not None or not selection.meshes:
            # the device is not known yet, but these checks do not depend on it
            _check(args, suite, cfg, dataclasses.replace(selection, device="cpu"), tf32=False)
    except (UsageError, ValueError) as e:
        parser.error(str(e))
    cache_dir = Path(tempfile.mkdtemp(prefix="twin-encoder-bench-"))
    try:
        return _run(args, argv, suite, config_name, cfg, cache_dir, parser)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _selection(args, *, device: str, frameworks: tuple[str, ...]) -> Selection:
    return Selection(
        frameworks=frameworks,
        device="cpu" if device == "auto" else device,
        dtypes=args.dtype,
        variants=args.variants,
        modes=args.modes,
        phases=args.phases,
        batch=args.batch,
        seq_lens=args.seq_lens,
        meshes=tuple(dict.fromkeys(m for m in args.mesh if m.devices > 1)),
        remats=args.remat or ("none",),
        config=args.config,
    )


def _check(args, suite, cfg, selection: Selection, *, tf32: bool = True) -> list[Case]:
    """The cases of the run; ``UsageError`` for a combination that cannot run (``tf32``:
    check ``--tf32`` against the device too)."""
    if tf32 and args.tf32 and selection.device != "gpu":
        raise UsageError(f"--tf32 applies to GPUs only; this run is on {selection.device}")
    cases = expand(suite, selection)
    if args.mesh and not selection.meshes:
        raise UsageError("--mesh: every mesh given is one device; give an axis of size > 1")
    if selection.meshes and not any(c.mesh.devices > 1 for c in cases):
        raise UsageError(
            "--mesh runs train-step rows on the mesh, and this selection has none: add "
            "--phases train_step, or use --suite mesh"
        )
    asked = [r for r in selection.remats if r != "none"]
    if asked and not any(c.remat != "none" for c in cases):
        raise UsageError(
            f"--remat {','.join(asked)} applies to rows with a backward (train_step, "
            "forward_backward) of an ours-* variant, and this selection has none: add "
            "--variants ours-... or --phases train_step"
        )
    for name in dict.fromkeys(c.variant for c in cases):
        problem = peers.config_problem(REGISTRY[name], cfg)
        if problem:
            raise UsageError(
                f"--variants {name}: {problem} (--config bert-base-tanh is a BERT every peer "
                "computes)"
            )
    for case in cases:
        if case.mesh.devices > 1:
            try:
                meshes.check(case.mesh, cfg, case.batch, case.seq_len)
            except ValueError as e:
                raise UsageError(f"--mesh {case.mesh.name}: {e}") from None
    return cases


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args, argv, suite, config_name, cfg, cache_dir: Path, parser) -> int:
    environment.prepare_process(cache_dir)
    modules, skipped = environment.import_frameworks(args.frameworks)
    for framework, reason in skipped.items():
        _log(f"skipping {framework}: {reason}")
    available = environment.available_devices(modules)
    try:
        device = environment.resolve_device(args.device, available)
    except environment.DeviceUnavailable as e:
        parser.error(str(e))
    frameworks = tuple(fw for fw in args.frameworks if fw in available.get(device, ()))
    for fw in args.frameworks:
        if fw in modules and fw not in frameworks:
            skipped[fw] = f"does not see a {device} here"
            _log(f"skipping {fw}: {skipped[fw]}")
    if not frameworks:
        print("error: no framework can run here; install torch or jax", file=sys.stderr)
        return 1
    selection = _selection(args, device=device, frameworks=frameworks)
    try:
        cases = _check(args, suite, cfg, selection)
    except UsageError as e:
        parser.error(str(e))
    cfg = max_len_for(cfg, cases)
    if args.dry_run:
        for case in cases:
            print(case.label())
        print(f"{len(cases)} rows, suite {suite.name}, config {config_name}", file=sys.stderr)
        return 0

    precision = environment.configure_precision(modules, tf32=args.tf32)
    environment.configure_compile_cache(modules, cache_dir)
    threads = args.threads or environment.usable_cores()
    runners = _make_runners(frameworks, device, threads)
    env = environment.capture(
        modules, device=device, argv=argv, precision=precision, skipped=skipped
    )
    names = env["device"]["names"]
    _log(
        f"suite {suite.name}, config {config_name}, device {device} "
        f"({', '.join(sorted(set(names.values()))) or device}), {len(cases)} rows, "
        f"matmuls in {precision['float32_matmuls']}, torch threads {threads}"
    )

    from benchmarks.progress import RunProgress
    from benchmarks.runner import RunSettings, run_cases

    settings = RunSettings(
        config_name=config_name,
        warmup=suite.warmup if args.warmup is None else args.warmup,
        repeats=args.repeats or suite.repeats,
        min_repeats=min(3, args.repeats or suite.repeats),
        budget_s=args.time_budget or suite.budget_s,
        seed=args.seed,
        tf32=args.tf32,
        threads=threads,
        warm_compile=suite.warm_compile,
        cache_dir=str(cache_dir),
    )
    started = time.perf_counter()
    with RunProgress(cfg, calls=settings.warmup + settings.repeats + 2) as progress:
        result = run_cases(
            cases,
            cfg=cfg,
            runners=runners,
            settings=settings,
            device_names=names,
            progress=progress,
        )
    wall_s = time.perf_counter() - started
    _write_results(args, suite, cfg, selection, settings, env, result, wall_s)
    if result.interrupted:
        return 130
    return 1 if result.failures else 0


def _make_runners(frameworks: Sequence[str], device: str, threads: int) -> dict[str, Any]:
    runners: dict[str, Any] = {}
    if "torch" in frameworks:
        from benchmarks.run_torch import TorchRunner

        runners["torch"] = TorchRunner(device, threads=threads)
    if "jax" in frameworks:
        from benchmarks.run_jax import JaxRunner

        runners["jax"] = JaxRunner(device)
    return runners


def _write_results(args, suite, cfg, selection, settings, env, result, wall_s: float) -> None:
    from benchmarks import report

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    doc = report.results_document(
        environment=env,
        settings={
            "suite": suite.name,
            "config_name": settings.config_name,
            "config": cfg.to_dict(),
            "selection": {
                **dataclasses.asdict(selection),
                "meshes": [m.name for m in selection.meshes],
            },
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "min_repeats": settings.min_repeats,
            "time_budget_s": settings.budget_s,
            "warm_compile": settings.warm_compile,
            "seed": settings.seed,
            "wall_s": round(wall_s, 1),
            "compiler_warmup_s": result.compiler_warmup_s,
            "load_average_end": environment.load_average(),
        },
        peaks=result.peaks,
        rows=result.rows,
        skipped=result.skipped,
        failures=result.failures,
        interrupted=result.interrupted,
    )
    report.write_json(doc, out / "results.json")
    report.write_csv(result.rows, out / "results.csv")
    written = [out / "results.json", out / "results.csv"]
    if not args.no_plots:
        from benchmarks.plots import plot_all

        try:
            written += plot_all(result.rows, out)
        except ImportError as e:  # matplotlib is optional
            _log(f"no plots: {e}")
    print(report.format_table(result.rows))
    print()
    print(report.LEGEND)
    print("\nattention kernels that ran:")
    for line in report.kernel_lines(result.rows):
        print("  " + line)
    print("\nverdict: each framework's fastest row per phase and shape, and the ratio of the two")
    for line in report.format_verdict(result.rows):
        print("  " + line)
    if any(r.devices > 1 and r.device == "cpu" for r in result.rows):
        print(
            "\nmesh rows on a CPU: host devices and gloo processes share the same cores: they "
            "show the overhead of the sharded program, not a speedup"
        )
    if result.failures:
        print(f"\n{len(result.failures)} row(s) failed; see 'failures' in results.json")
    names = ", ".join(p.name for p in written)
    print(f"\n{len(result.rows)} rows in {wall_s:.0f} s; wrote to {out}/: {names}")
