"""Sliding-window layers against global ones on the flash backend, both frameworks, interleaved.

    python -m studies.sliding_window [--framework torch] [--layers 3] [--seq-len 2048]

The same ModernBERT-base stack twice, on the flash backend: as released (global attention
every third layer, the others within +-64 positions) and with every layer global
(``modernbert-base-global``), built from the same random weights. Their forward calls are
timed in turn (``benchmarks.harness.time_interleaved``, each round starting with the other),
so a busy machine slows both alike; the CPU time of the process is printed beside the wall
time, since on a shared machine it is the steadier of the two. Prints the medians, the ratio
global / windowed, and the ratio of the FLOPs each computes (``shared.flops``): the flash
kernel skips every key block outside a local layer's band, so the time ratio should follow
the attention's share of the FLOPs.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--layers", type=int, default=3, help="the first N layers (default 3)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import numpy as np

    from benchmarks.harness import time_interleaved
    from benchmarks.suites import PRESETS, with_layers
    from shared import flops, reference

    calls, work = {}, {}
    ids = np.random.default_rng(0).integers(
        0, PRESETS["modernbert-base"].vocab_size, (1, args.seq_len)
    )
    for name in ("modernbert-base", "modernbert-base-global"):
        cfg = with_layers(PRESETS[name], args.layers)
        cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
        weights = reference.init_weights(cfg, 0)
        calls[name] = _forward(args.framework, cfg, weights, ids)
        work[name] = flops.encoder_phase_flops("forward", cfg, 1, args.seq_len)
    timings = time_interleaved(calls, args.repeats)
    print(
        f"{args.framework} flash forward, ModernBERT-base first {args.layers} layers, B=1, "
        f"T={args.seq_len}, {args.repeats} interleaved rounds"
    )
    for name, t in timings.items():
        print(
            f"  {name:24} wall {t.wall_stats.median:8.2f} s (IQR {t.wall_stats.iqr:.2f})  "
            f"cpu {t.cpu_stats.median:8.2f} s  {work[name] / 1e9:9.3f} GFLOP"
        )
    w, g = timings["modernbert-base"], timings["modernbert-base-global"]
    print(
        f"  global / windowed: wall {g.wall_stats.median / w.wall_stats.median:.2f}, "
        f"cpu {g.cpu_stats.median / w.cpu_stats.median:.2f}, FLOPs "
        f"{work['modernbert-base-global'] / work['modernbert-base']:.2f}"
    )


def _forward(framework: str, cfg, weights, ids):
    """A no-argument call running one forward to completion."""
    if framework == "torch":
        import torch

        import torch_impl

        model = torch_impl.from_weights(weights, cfg, backend="flash").eval()
        x = torch.as_tensor(ids)

        def call():
            with torch.no_grad():
                model(x)

        return call
    import jax
    from flax import nnx

    import jax_impl

    model = jax_impl.from_weights(weights, cfg, backend="flash")
    forward = nnx.jit(lambda m, x: m(x))
    x = jax.numpy.asarray(ids)
    return lambda: forward(model, x).block_until_ready()


if __name__ == "__main__":
    main()
