"""Ours against one peer in one process, their calls interleaved: for a shared machine.

    python -m benchmarks.peers.paired --framework torch --peer hf --phase forward
    python -m benchmarks.peers.paired --framework jax --peer keras --phase train_step

Both are built from the same weights and compiled as the suite's rows are
(``run_torch.TorchRunner.workload`` / ``run_jax.JaxRunner.workload``), then timed by
``benchmarks.harness.time_interleaved``: one untimed call each, then rounds of one call of
each in turn, so that a disturbance from other processes hits both alike. Prints wall and
CPU-time medians and the ratio peer / ours. JAX with keras-hub sets ``KERAS_BACKEND=jax``
before anything imports Keras.

``--profile`` (PyTorch only) then runs one more call of each under ``torch.profiler`` and
prints how many ATen operator calls each made and where its CPU time went, by operator: the
way to tell a different computation from a different wait on a shared machine.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "jax"), required=True)
    parser.add_argument("--peer", choices=("hf", "hf-eager", "keras"), required=True)
    parser.add_argument("--phase", choices=("forward", "train_step"), default="forward")
    parser.add_argument("--config", default="bert-base-tanh")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="then profile one call of each (PyTorch only)"
    )
    args = parser.parse_args(argv)
    if args.peer == "keras" and args.framework == "torch":
        parser.error("keras-hub on torch: run its rows through python -m benchmarks")
    if args.profile and args.framework != "torch":
        parser.error("--profile reads torch.profiler: it needs --framework torch")
    os.environ.setdefault("KERAS_BACKEND", args.framework)

    import numpy as np

    from benchmarks import environment
    from benchmarks.harness import time_interleaved
    from benchmarks.runner import make_input_ids
    from benchmarks.suites import Case, load_config
    from shared import reference

    modules, skipped = environment.import_frameworks((args.framework,))
    if skipped:
        raise SystemExit(skipped[args.framework])
    environment.configure_precision(modules, tf32=False)
    name, cfg = load_config(args.config)
    if args.framework == "torch":
        from benchmarks.run_torch import TorchRunner

        runner = TorchRunner("cpu", threads=args.threads or environment.usable_cores())
    else:
        from benchmarks.run_jax import JaxRunner

        runner = JaxRunner("cpu")
    weights = reference.init_weights(cfg, 0)
    ids = make_input_ids(cfg, args.batch, args.seq_len, 0)
    calls = {}
    for variant in ("ours-fused", args.peer):
        case = Case(
            args.framework,
            variant,
            "compiled",
            args.phase,
            "cpu",
            "float32",
            args.batch,
            args.seq_len,
        )
        work = runner.workload(case, cfg, weights, ids, warm_compile=False)
        calls[variant] = lambda work=work: work.sync(work.step())
    timings = time_interleaved(calls, args.repeats)
    ours = timings["ours-fused"]
    print(
        f"{args.framework} {args.phase} {name} B={args.batch} T={args.seq_len}, compiled, "
        f"{args.repeats} interleaved rounds (load average {environment.load_average()})"
    )
    for variant, t in timings.items():
        print(
            f"  {variant:10} wall {t.wall_stats.median * 1e3:9.1f} ms (IQR "
            f"{t.wall_stats.iqr * 1e3:.1f})  cpu {t.cpu_stats.median * 1e3:9.1f} ms"
        )
    peer = timings[args.peer]
    print(
        f"  {args.peer} / ours-fused: wall {np.median(peer.wall) / np.median(ours.wall):.3f}, "
        f"cpu {np.median(peer.cpu) / np.median(ours.cpu):.3f}"
    )
    if args.profile:
        for variant, call in calls.items():
            print(f"\n{variant}: {profile_torch(call)[1]}")


def profile_torch(call, rows: int = 12) -> tuple[dict[str, int], str]:
    """One call of ``call`` under ``torch.profiler``: ``(calls per operator, printed table)``.

    The counts include nested calls (``aten::matmul`` calls ``aten::mm``); the table lists the
    ``rows`` operators with the most self CPU time.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    counts = {e.key: e.count for e in events}
    self_ms = sum(e.self_cpu_time_total for e in events) / 1e3
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50)
    return counts, f"{sum(counts.values())} operator calls, {self_ms:.1f} ms self CPU time\n{table}"


if __name__ == "__main__":
    main()
