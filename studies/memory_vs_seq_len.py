"""Peak memory of the BERT-base train step against sequence length, both frameworks.

    python -m studies.memory_vs_seq_len [--seq-lens 512,1024,2048,4096,8192]
        [--backends math,fused,flash] [--remat none,block] [--torch-timeout-s 600]
        [--out studies/results/memory-vs-seq-len]

For each attention backend, ``remat`` policy and T (B=1, float32, one device, CPU), the
benchmark's train step (loss, gradient, clipping, AdamW; ``benchmarks.run_jax`` and
``benchmarks.run_torch``):

* JAX: XLA's buffer plan of the compiled step, compiled as the benchmarks compile it (XLA:CPU's
  memory-optimised scheduler, ``jax_impl.train.compiler_options``), working memory as
  ``benchmarks.run_jax.planned_working_bytes`` counts it (temporaries and outputs, less the
  outputs that reuse the donated parameters and optimizer state). Compiled only, never run:
  the plan is the same on any CPU, and T=8192 with math attention is planned even though it
  would not fit.
* PyTorch: measured, in a child process per point (eager, ``--torch-timeout-s`` each): one
  step to create AdamW's state, then the growth of the resident set during a second step
  (``benchmarks.harness.PeakRss``). A point whose analytic size (:func:`torch_estimate`)
  exceeds half the memory available is not run and is reported "over memory" with that size; a
  point over the time limit is reported as such. No value is invented for either.

Both measure the memory one step needs beyond the parameters and optimizer state already
held; they are different instruments (a plan, and sampled process memory), so a ratio of the
two is approximate. Prints one line per point and writes ``results.json`` and, through
``benchmarks.plots.memory_vs_seq_len``, ``memory_vs_seq_len.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.suites import load_config
from shared.backends import REMATS

BACKENDS = ("math", "fused", "flash")


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); 0 where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def torch_estimate(cfg, backend: str, remat: str, seq_len: int, batch: int = 1) -> int:
    """A lower bound of PyTorch's bytes for the attention of one train step, from the shapes:
    math keeps each layer's (B, H, T, T) float32 weights for the backward and the backward
    of one layer holds the weights, their gradient and the scores' gradient at once
    (3 such arrays); with ``remat="block"`` only that one layer's 3. Fused and flash keep
    O(T) per layer: 0 here (they always fit where math's activations would)."""
    if backend != "math":
        return 0
    square = batch * cfg.n_heads * seq_len * seq_len * 4
    kept = 0 if remat == "block" else cfg.n_layers * square
    return kept + 3 * square


def jax_point(cfg, backend: str, remat: str, seq_len: int) -> dict:
    """XLA's plan of the benchmark's compiled train step (never run)."""
    import jax

    from benchmarks import run_jax
    from studies.cpu_scheduler import compile_step, train_step

    t0 = time.perf_counter()
    fn, args, donate = train_step(cfg, backend, remat, 1, seq_len)
    compiled = compile_step(fn, args, donate, "memory")
    m = compiled.memory_analysis()
    point = {
        "bytes": run_jax.planned_working_bytes(compiled),
        "temporaries": int(m.temp_size_in_bytes),
        "method": "xla_buffer_assignment (compiled, not run)",
        "seconds": time.perf_counter() - t0,
    }
    del compiled, args
    jax.clear_caches()
    return point


def torch_child(cfg_name: str, backend: str, remat: str, seq_len: int) -> None:
    """In the child: two eager train steps, the second measured; prints one JSON line."""
    import torch

    from benchmarks.harness import PeakRss
    from benchmarks.run_torch import TorchRunner
    from benchmarks.suites import Case
    from shared import reference

    _, cfg = load_config(cfg_name)
    cfg = cfg.replace(max_len=max(cfg.max_len, seq_len))
    runner = TorchRunner("cpu", threads=os.cpu_count() or 1)
    variant = f"ours-{backend}"
    case = Case("torch", variant, "eager", "train_step", "cpu", "float32", 1, seq_len, remat=remat)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, seq_len))
    work = runner.workload(case, cfg, reference.init_weights(cfg, seed=0), ids)
    t0 = time.perf_counter()
    work.step()  # creates AdamW's state
    step_s = time.perf_counter() - t0
    with PeakRss() as rss:
        work.step()
    del torch
    print(json.dumps({"bytes": rss.peak_bytes, "step_s": step_s}), flush=True)


def torch_point(cfg_name: str, cfg, backend: str, remat: str, seq_len: int, timeout_s: float):
    """PyTorch's measured growth in a child process, or why there is none."""
    estimate = torch_estimate(cfg, backend, remat, seq_len)
    free = available_bytes()
    if estimate > free / 2:  # the machine is shared: use at most half of it
        return {
            "bytes": None,
            "method": f"over memory: analytic size {estimate / 2**30:.1f} GiB, "
            f"{free / 2**30:.1f} GiB available",
        }
    command = [sys.executable, "-m", "studies.memory_vs_seq_len", "--child"]
    command += [cfg_name, backend, remat, str(seq_len)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"bytes": None, "method": f"not measured: over the time limit ({timeout_s:.0f} s)"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"bytes": None, "method": f"failed (exit {done.returncode}): {tail[0]}"}
    point = json.loads(done.stdout.strip().splitlines()[-1])
    point["method"] = "rss_sampled (eager, second step)"
    point["seconds"] = time.perf_counter() - t0
    return point


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, backend, remat, seq_len = argv[1:]
        torch_child(name, backend, remat, int(seq_len))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert-base", help="preset or JSON file")
    parser.add_argument("--seq-lens", default="512,1024,2048,4096,8192")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--remat", default="none,block", help=f"from {','.join(REMATS)}")
    parser.add_argument("--frameworks", default="jax,torch")
    parser.add_argument("--torch-timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("studies/results/memory-vs-seq-len"))
    parser.add_argument(
        "--plot",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="only draw these results.json "
        "files' points together into --out (runs measured in separate processes)",
    )
    args = parser.parse_args(argv)
    if args.plot:
        from benchmarks.plots import memory_vs_seq_len

        runs = [json.loads(p.read_text()) for p in args.plot]
        points = [p for run in runs for p in run["points"]]
        args.out.mkdir(parents=True, exist_ok=True)
        memory_vs_seq_len(points, args.out / "memory_vs_seq_len.png", title=runs[0]["header"])
        return
    import jax
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config(args.config)
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    cfg = cfg.replace(max_len=max(cfg.max_len, *seq_lens))
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"config {args.config}, B=1, float32, train step, jax {jax.__version__}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{available_bytes() / 2**30:.1f} GiB available, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    print(header, flush=True)
    points = []
    for framework in args.frameworks.split(","):
        for backend in args.backends.split(","):
            for remat in args.remat.split(","):
                timed_out = False
                for seq_len in seq_lens:
                    if framework == "jax":
                        point = jax_point(cfg, backend, remat, seq_len)
                    elif timed_out:
                        point = {
                            "bytes": None,
                            "method": "not run: a shorter T was over the time limit",
                        }
                    else:
                        point = torch_point(
                            args.config, cfg, backend, remat, seq_len, args.torch_timeout_s
                        )
                        timed_out = "time limit" in point["method"]
                    point.update(framework=framework, backend=backend, remat=remat, seq_len=seq_len)
                    points.append(point)
                    size = "-" if point["bytes"] is None else f"{point['bytes'] / 2**20:,.0f} MiB"
                    print(
                        f"{framework:6s}{backend:7s}{remat:7s}T={seq_len:<6d}{size:>14s}  "
                        f"{point['method']}",
                        flush=True,
                    )
                    (args.out / "results.json").write_text(
                        json.dumps({"header": header, "points": points}, indent=1)
                    )
    from benchmarks.plots import memory_vs_seq_len

    memory_vs_seq_len(points, args.out / "memory_vs_seq_len.png", title=header)


if __name__ == "__main__":
    main()
