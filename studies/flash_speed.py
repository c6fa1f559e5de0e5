"""How fast is JAX's written-out flash attention on the CPU, before and after a change?

    python -m studies.flash_speed [--seq-len 2048] [--repeats 5] [--train-repeats 3]
        [--blocks 128x128,256x256] [--skip-train-step]

Two parts, float32, ``jax_default_matmul_precision="highest"``, BERT-base shapes:

1. flash attention alone, forward + backward (``jax.grad`` of <O, dO> with respect to Q, K
   and V under ``jax.jit``), B=1, H=12, T=2048, hd=64, no mask: the kernel as it was
   (``jax_impl/flash.py`` at ``--before``, read from the repository's history with ``git
   show``; by default the commit before its loops were laid out for XLA:CPU) and as it is
   (``jax_impl/flash.py``), at each ``--blocks`` size (Br x Bc);
2. the benchmarks' BERT-base train step at B=1, T=2048 on the flash backend, built as
   ``benchmarks/run_jax.py`` builds it (``JaxRunner._pure_function("train_step")``:
   gradient, clipping, AdamW, parameters and optimizer state donated) and compiled with
   ``jax_impl.train.compiler_options``, once with each kernel at its default block sizes
   and once with the new kernel at each ``--train-blocks`` size.

Every candidate of a part and a 2048^3 matmul (``benchmarks.peaks``: the measured peak)
are timed in the same rounds, alternating (``benchmarks.harness.time_interleaved``). On a
shared machine compare within one run only, CPU time first: the median CPU time of this
process per call (``time.process_time``), which other processes inflate far less than wall
time, then the median and minimum wall time. % of peak is "FLOPs / time" over "matmul
FLOPs / its time", each side timed the same way. The FLOPs are the model's
(``shared/flops.py``: the two attention products forward, 3x for forward + backward), not
the kernel's, which recomputes Q K^T in the backward (7 products where the model counts 6).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_impl
import jax_impl.attention
import jax_impl.flash
import jax_impl.train
from benchmarks.harness import Timings, time_interleaved
from benchmarks.peaks import peak_matmul_size
from benchmarks.run_jax import JaxRunner, build_model
from benchmarks.suites import load_config
from shared.flops import encoder_phase_flops, matmul_flops
from shared.reference import init_weights

BEFORE = "679c8bf"  # jax_impl/flash.py with 128 x 128 blocks and transposed loop operands
PEAK_N = peak_matmul_size("cpu")


def kernel_at(revision: str) -> types.ModuleType:
    """``jax_impl/flash.py`` as it was at ``revision``, executed as a module of its own (it
    imports today's ``shared`` and ``jax_impl``, as it did then). RuntimeError naming the
    revision when git or that commit is not at hand (a copy without history)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:jax_impl/flash.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(
            f"cannot read jax_impl/flash.py at {revision!r} from git: {e}; "
            "run from a clone with its history, or pass --before REVISION"
        ) from e
    module = types.ModuleType(f"flash_at_{revision}")
    exec(compile(source, f"{revision}:jax_impl/flash.py", "exec"), module.__dict__)
    return module


def attention_flops(b: int, h: int, t: int, hd: int) -> int:
    """The model's FLOPs of attention forward + backward: 3 x (Q K^T and P V)."""
    return 3 * 2 * matmul_flops(t, hd, t) * b * h


def peak_call() -> Callable[[], jax.Array]:
    """One (n, n) @ (n, n) float32 product under ``jax.jit``, as ``benchmarks.peaks`` times it."""
    a, c = (jax.random.normal(k, (PEAK_N, PEAK_N)) for k in jax.random.split(jax.random.key(1)))
    matmul = jax.jit(jnp.matmul).lower(a, c).compile()
    return lambda: jax.block_until_ready(matmul(a, c))


def attention_call(kernel, b, h, t, hd, block_q: int, block_k: int) -> Callable[[], object]:
    """``kernel``'s forward + backward on random (B, H, T, hd) inputs, compiled."""
    q, k, v, d_out = (
        jax.random.normal(key, (b, h, t, hd)) for key in jax.random.split(jax.random.key(0), 4)
    )

    def loss(q, k, v):
        return jnp.vdot(kernel(q, k, v, block_q=block_q, block_k=block_k), d_out)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return lambda: jax.block_until_ready(grad(q, k, v))


def train_step_call(kernel, cfg, t: int) -> Callable[[], object]:
    """The benchmarks' compiled train step (B=1, length ``t``) with ``kernel`` as the flash
    backend's attention (``jax_impl.attention.ATTENTION`` is read when the model is built)."""
    saved = jax_impl.attention.ATTENTION["flash"]
    jax_impl.attention.ATTENTION["flash"] = kernel
    try:
        model = build_model("ours-flash", cfg, init_weights(cfg), dtype="float32")
    finally:
        jax_impl.attention.ATTENTION["flash"] = saved
    model.train()
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, t))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    runner = JaxRunner("cpu")
    fn, args, donate = runner._pure_function("train_step", graphdef, params, rest, jnp.asarray(ids))
    options = jax_impl.train.compiler_options("cpu")
    compiled = jax.jit(fn, donate_argnums=donate, compiler_options=options).lower(*args).compile()
    state = {"args": args}

    def step():
        params, opt_state, loss = compiled(*state["args"])
        state["args"] = (params, opt_state, *state["args"][2:])
        return jax.block_until_ready(loss)

    return step


def report(timings: dict[str, Timings], flops: int) -> None:
    """Median CPU, median and minimum wall time of each candidate, and its % of the peak."""
    peak = timings["peak matmul"]
    peak_flops = matmul_flops(PEAK_N, PEAK_N, PEAK_N)
    peak_cpu, peak_wall = np.median(peak.cpu), np.median(peak.wall)
    print(
        f"  peak matmul ({PEAK_N}^3): {peak_flops / peak_wall / 1e9:.0f} GFLOP/s at the median "
        f"wall time, {peak_flops / peak_cpu / 1e9:.0f} GFLOP per CPU-second"
    )
    print(
        f"  {'candidate':24s} {'CPU ms':>9s} {'wall ms':>9s} {'min wall':>9s} {'IQR wall':>9s}"
        f" {'% peak (CPU)':>13s} {'% peak (wall)':>14s}"
    )
    for name, t in timings.items():
        if name == "peak matmul":
            continue
        cpu, wall = np.median(t.cpu), np.median(t.wall)
        q1, q3 = np.percentile(t.wall, [25, 75])
        print(
            f"  {name:24s} {cpu * 1e3:9.1f} {wall * 1e3:9.1f} {min(t.wall) * 1e3:9.1f}"
            f" {(q3 - q1) * 1e3:9.1f} {100 * (flops / cpu) / (peak_flops / peak_cpu):13.1f}"
            f" {100 * (flops / wall) / (peak_flops / peak_wall):14.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of part 1")
    parser.add_argument("--train-repeats", type=int, default=3, help="rounds of part 2")
    parser.add_argument("--blocks", default="128x128,256x256", help="Br x Bc sizes of part 1")
    parser.add_argument(
        "--train-blocks", default="128x128", help="more Br x Bc sizes of the new kernel, part 2"
    )
    parser.add_argument("--skip-train-step", action="store_true")
    parser.add_argument(
        "--before", default=BEFORE, help=f"git revision of the old kernel (default {BEFORE})"
    )
    args = parser.parse_args(argv)
    before = kernel_at(args.before)
    kernels = {"before": before.flash_attention, "after": jax_impl.flash.flash_attention}
    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config("bert-base")
    cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
    b, h, t, hd = 1, cfg.n_heads, args.seq_len, cfg.d_model // cfg.n_heads
    print(
        f"jax {jax.__version__}, float32, B={b}, H={h}, T={t}, hd={hd}; default blocks "
        f"before ({args.before}) {before.BLOCK_Q}x{before.BLOCK_K}, after "
        f"{jax_impl.flash.BLOCK_Q}x{jax_impl.flash.BLOCK_K}; load average at the start "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    calls: dict[str, Callable[[], object]] = {}
    for blocks in args.blocks.split(","):
        block_q, block_k = map(int, blocks.split("x"))
        for name, kernel in kernels.items():
            calls[f"{name} {block_q}x{block_k}"] = attention_call(
                kernel, b, h, t, hd, block_q, block_k
            )
    calls["peak matmul"] = peak_call()
    print(f"\n1. flash attention alone, forward + backward, {args.repeats} rounds:")
    report(time_interleaved(calls, args.repeats), attention_flops(b, h, t, hd))
    if not args.skip_train_step:
        calls = {f"train step, {name}": train_step_call(k, cfg, t) for name, k in kernels.items()}
        for blocks in filter(None, args.train_blocks.split(",")):
            block_q, block_k = map(int, blocks.split("x"))
            kernel = functools.partial(kernels["after"], block_q=block_q, block_k=block_k)
            calls[f"train step, after {blocks}"] = train_step_call(kernel, cfg, t)
        calls["peak matmul"] = peak_call()
        print(f"\n2. BERT-base train step, B=1, T={t}, {args.train_repeats} rounds:")
        report(
            time_interleaved(calls, args.train_repeats),
            encoder_phase_flops("train_step", cfg, 1, t),
        )
    print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
