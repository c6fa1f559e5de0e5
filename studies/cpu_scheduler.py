"""XLA:CPU's instruction schedulers: the memory plan and the time of the JAX train step.

    python -m studies.cpu_scheduler [--config bert-base] [--batch 1] [--seq-len 2048]
        [--backends flash] [--remat none,block] [--repeats 3] [--plan-only]

XLA:CPU orders the instructions of a compiled program with one of two schedulers
(``DebugOptions.xla_cpu_scheduler_type``): by default the concurrency-optimised one, which
starts independent work as early as it can so that the runtime may overlap it, or the
memory-optimised one (``CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``), which orders the same
instructions to keep the fewest bytes live. The buffer plan follows the order: a value is
kept from its producer to its last consumer. Under ``jax.checkpoint`` the recomputation of a
block depends only on the block's saved inputs, so the concurrency-optimised order ran it
as early as in the forward pass and the plan kept both copies: there, activation
checkpointing saved nothing. The model's remat (``jax_impl.encoder._checkpointed``) now
makes each recomputation depend on the incoming cotangent, and the cotangent passed on
depend on the block's parameter gradients, so both orders recompute block by block.

For each backend and ``remat`` policy, the benchmark's compiled train step
(``benchmarks.run_jax``: loss, gradient, clipping, AdamW, parameters and optimizer state
donated) is compiled twice, once per scheduler (``jax_impl.train.compiler_options``), and
the script prints XLA's plan of each (temporaries in ``d_model``-wide float32 vectors per
token per layer, and the working memory ``benchmarks.run_jax.planned_working_bytes`` in
MiB) and, unless ``--plan-only``, the two executables' times, interleaved in the same rounds
(``benchmarks.harness.time_interleaved``; median wall, minimum wall, median CPU time) with
the utilisation against a large matmul timed in the same rounds (``benchmarks.peaks``).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_impl.train
from benchmarks import run_jax
from benchmarks.harness import time_interleaved
from benchmarks.peaks import peak_matmul_size
from benchmarks.suites import load_config
from shared.backends import REMATS
from shared.flops import matmul_flops, phase_flops

SCHEDULERS = ("concurrency", "memory")


def train_step(cfg, backend: str, remat: str, batch: int, seq_len: int):
    """``(function, arguments, donated argument numbers)`` of the benchmark's train step."""
    weights = _weights(cfg)
    model = run_jax.build_model(f"ours-{backend}", cfg, weights, dtype="float32", remat=remat)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len)))
    runner = run_jax.JaxRunner("cpu")
    return runner._pure_function("train_step", graphdef, params, rest, ids)


def _weights(cfg):
    from shared import reference

    return reference.init_weights(cfg, seed=0)


def compile_step(fn, args, donate, scheduler: str):
    """``fn`` compiled with XLA:CPU's ``scheduler`` ("concurrency": the default)."""
    options = jax_impl.train.compiler_options("cpu", memory_scheduler=scheduler == "memory")
    return jax.jit(fn, donate_argnums=donate, compiler_options=options).lower(*args).compile()


def _stepper(executable, state: dict, slot: str):
    """One call of the compiled train step on ``state[slot]``, threading the new parameters
    and optimizer state (donated) into the next call; waits for the loss."""

    def run():
        params, opt_state, loss = executable(*state[slot])
        state[slot] = (params, opt_state, *state[slot][2:])
        jax.block_until_ready(loss)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert-base", help="preset or JSON file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--backends", default="flash")
    parser.add_argument("--remat", default="none,block", help=f"from {','.join(REMATS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plan-only", action="store_true", help="compile, do not run")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config(args.config)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
    unit = args.batch * args.seq_len * cfg.n_layers * cfg.d_model * 4
    flops = phase_flops(
        "train_step",
        args.batch,
        args.seq_len,
        d_model=cfg.d_model,
        d_ff=cfg.d_ff,
        n_layers=cfg.n_layers,
    )
    print(
        f"config {args.config}, B={args.batch}, T={args.seq_len}, float32, jax {jax.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"
    )
    n = peak_matmul_size("cpu")
    a, b = (jax.random.normal(k, (n, n)) for k in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    for backend in args.backends.split(","):
        for remat in args.remat.split(","):
            fn, args0, donate = train_step(cfg, backend, remat, args.batch, args.seq_len)
            compiled, state = {}, {}
            for scheduler in SCHEDULERS:
                compiled[scheduler] = compile_step(fn, args0, donate, scheduler)
                m = compiled[scheduler].memory_analysis()
                work = run_jax.planned_working_bytes(compiled[scheduler])
                print(
                    f"{backend:6s} {remat:9s} {scheduler:11s} scheduler: temporaries "
                    f"{m.temp_size_in_bytes / unit:6.1f} vectors/token/layer "
                    f"({m.temp_size_in_bytes / 2**20:7,.0f} MiB), working memory "
                    f"{work / 2**20:7,.0f} MiB",
                    flush=True,
                )
                # every executable donates its parameters: each gets its own copy
                state[scheduler] = jax.tree.map(jnp.copy, args0)
            if args.plan_only:
                continue

            calls = {s: _stepper(compiled[s], state, s) for s in SCHEDULERS}
            calls["matmul"] = lambda: jax.block_until_ready(matmul(a, b))
            timings = time_interleaved(calls, args.repeats)
            peak = matmul_flops(n, n, n) / np.median(timings["matmul"].wall)
            peak_cpu = matmul_flops(n, n, n) / np.median(timings["matmul"].cpu)
            for scheduler in SCHEDULERS:
                t = timings[scheduler]
                wall, cpu = np.median(t.wall), np.median(t.cpu)
                print(
                    f"{backend:6s} {remat:9s} {scheduler:11s} scheduler: median {wall * 1e3:9.1f} "
                    f"ms, min {min(t.wall) * 1e3:9.1f} ms, CPU {cpu * 1e3:9.1f} ms; "
                    f"{flops / wall / peak:6.1%} of the peak (wall), "
                    f"{flops / cpu / peak_cpu:6.1%} (CPU time)",
                    flush=True,
                )
            print(
                f"matmul n={n}: median {np.median(timings['matmul'].wall) * 1e3:.1f} ms, "
                f"{peak / 1e9:.1f} GFLOP/s",
                flush=True,
            )
            jax.clear_caches()


if __name__ == "__main__":
    main()
