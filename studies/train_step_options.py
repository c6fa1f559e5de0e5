"""What XLA:CPU's options and the model's formulation do to the JAX train step's speed.

    python -m studies.train_step_options [--config bert-base] [--batch 8] [--seq-len 128]
        [--backends math,fused] [--candidates all] [--repeats 7]

The benchmark's compiled train step (``benchmarks.run_jax``: the loss ``sum(h**2)``, its
gradient, clipping, AdamW; parameters and optimizer state donated; XLA:CPU's
memory-optimised scheduler from ``jax_impl.train.compiler_options``) is compiled once per
candidate and all candidates are timed in the same rounds, alternating
(``benchmarks.harness.time_interleaved``), with the 2048^3 matmul of ``benchmarks.peaks``
(the measured peak) as one more candidate of every round. Each candidate is printed with its
median and interquartile range of wall time and of this process's CPU time, and its share of
the peak measured the same way: "analytic FLOPs / time" over "peak matmul FLOPs / its time"
(``shared.flops.phase_flops``), so a disturbance that slows a whole round largely cancels.

A candidate is an XLA option, a formulation of the same model, or both:

* XLA options (:data:`OPTIONS`): ``DebugOptions`` fields of this jaxlib's XLA:CPU, passed as
  ``compiler_options`` to ``jax.jit`` on top of the committed ones. Fast-math options are
  left out: they change the numbers.
* formulations (:data:`FORMULATIONS`): the same function written differently, applied to the
  project's modules while the step is traced (:func:`formulation`); each is tested equal in
  value and gradient to the model as built (``parity_tests/test_study_train_step_options.py``).

All executables compute the same function of arguments of the same shapes, so they share
one set of parameters and optimizer state: each call donates it and the next candidate
takes the result (memory for one model, not one per candidate).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_impl.train
from benchmarks import run_jax
from benchmarks.harness import time_interleaved
from benchmarks.peaks import peak_matmul_size
from benchmarks.suites import load_config
from jax_impl.attention import MultiHeadAttention
from shared.flops import matmul_flops, phase_flops
from studies.backward_profile import _normalize_vjp, _rows_matmul

ENCODER = sys.modules["jax_impl.encoder"]  # the module (``jax_impl.encoder`` may be shadowed)

# XLA:CPU DebugOptions of jaxlib 0.10.2 that change how the step runs, not what it computes.
# ``xla_cpu_experimental_ynn_fusion_type`` is a repeated enum: a compile option sets one
# value (the fusions YNNPACK may take), "" none (every dot on Eigen).
OPTIONS: dict[str, dict[str, object]] = {
    "concurrency scheduler (XLA default)": {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"},
    "no concurrency-optimised scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
    "YNNPACK: dot fusions only": {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"
    },
    "YNNPACK off (Eigen dots)": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "copy insertion region analysis": {"xla_cpu_copy_insertion_use_region_analysis": True},
    "tiling propagation": {"xla_cpu_experimental_enable_tiling_propagation": True},
    "no fusion emitters": {"xla_cpu_use_fusion_emitters": False},
    "parallel codegen split 1": {"xla_cpu_parallel_codegen_split_count": 1},
}

# formulation name -> what it changes (see ``formulation``)
FORMULATIONS: dict[str, str] = {
    "gelu via erf": "exact GELU as 0.5 x (1 + erf(x / sqrt 2)) instead of jax.nn.gelu's erfc",
    "projections on rows": "every linear layer on (B*T, D_in) rows, reshaped back",
    "weight grads on YNNPACK": "linear layers on rows with dW = (X^T materialised) @ dY",
    "layer norm custom_vjp": "LayerNorm's backward written as one expression",
    "fused QKV": "q, k, v projected by one (D, 3D) product of the concatenated weights",
    "remat dots saveable": "each layer under jax.checkpoint, saving matmul outputs only",
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    formulations: tuple[str, ...] = ()
    options: dict[str, object] = dataclasses.field(default_factory=dict)


def candidates() -> dict[str, Candidate]:
    """Every candidate, the committed step first."""
    out = [Candidate("as committed")]
    out += [Candidate(name, options=opts) for name, opts in OPTIONS.items()]
    out += [Candidate(name, formulations=(name,)) for name in FORMULATIONS]
    both = ("gelu via erf", "weight grads on YNNPACK")
    out.append(Candidate("erf + YNNPACK weight grads", both))
    three = (*both, "layer norm custom_vjp")
    out.append(Candidate("erf + YNNPACK + LN custom_vjp", three))
    out.append(
        Candidate(
            "the three + no concurrency-optimised",
            three,
            OPTIONS["no concurrency-optimised scheduler"],
        )
    )
    return {c.name: c for c in out}


# --- formulations: the project's modules, written differently --------------------------------


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016; PyTorch's
    formula), where ``jax.nn.gelu(approximate=False)`` computes x erfc(-x / sqrt 2) / 2."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1 / np.sqrt(2.0), x.dtype)))


def _activation_erf(name: str, x: jax.Array, _activation=ENCODER.activation) -> jax.Array:
    return gelu_erf(x) if name == "gelu" else _activation(name, x)


def _row(v: jax.Array, like: jax.Array) -> jax.Array:
    """(n,) -> (1, ..., 1, n) of ``like``'s rank, as rank promotion would broadcast it."""
    return v.reshape((1,) * (like.ndim - 1) + (-1,))


def _linear_rows(self: nnx.Linear, x: jax.Array, out_sharding=None) -> jax.Array:
    """``nnx.Linear`` on (N, D_in) rows: (..., D_in) -> (..., D_out)."""
    kernel = self.kernel[...]  # (D_in, D_out)
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    return y if self.bias is None else y + _row(self.bias[...], y)


def _linear_ynn(self: nnx.Linear, x: jax.Array, out_sharding=None) -> jax.Array:
    """``nnx.Linear`` whose weight gradient is a product YNNPACK accepts (``_rows_matmul``)."""
    kernel = self.kernel[...]
    y = _rows_matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    return y if self.bias is None else y + _row(self.bias[...], y)


def _layer_norm_vjp(self: nnx.LayerNorm, x: jax.Array, *, mask=None) -> jax.Array:
    """``nnx.LayerNorm`` (last axis, exact variance) with a hand-written backward."""
    y = _normalize_vjp(x, self.epsilon)
    if self.scale is not None:
        y = y * _row(self.scale[...], y)
    return y if self.bias is None else y + _row(self.bias[...], y)


def _attention_fused_qkv(self: MultiHeadAttention, x: jax.Array, context=None, **kwargs):
    """Self-attention with q, k, v from one product ``x @ [W_q W_k W_v]``; the general call
    (cross-attention, GQA, q/k norms, RoPE, weights, context parallelism) otherwise."""
    plain = (
        context is None
        and self.n_kv_heads == self.n_heads
        and self.q_norm is None
        and kwargs.get("rope") is None
        and not kwargs.get("return_attention")
        and self.context_parallel is None
    )
    if not plain:
        return _attention_fused_qkv.general(self, x, context, **kwargs)
    b, t, d = x.shape
    hd = self.head_dim
    w = jnp.concatenate([p.kernel[...] for p in (self.q, self.k, self.v)], axis=1)  # (D, 3Hhd)
    qkv = x.reshape(b * t, d) @ w  # (B*T, 3 H hd)
    if self.q.bias is not None:
        qkv = qkv + jnp.concatenate([p.bias[...] for p in (self.q, self.k, self.v)])[None]
    qkv = qkv.reshape(b, t, 3, -1, hd)
    q, k, v = (qkv[:, :, i].swapaxes(1, 2) for i in range(3))  # (B, H, T, hd)
    masks = {
        "key_padding_mask": kwargs.get("key_padding_mask"),
        "is_causal": kwargs.get("is_causal", False),
        "window": kwargs.get("window"),
    }
    out = self.attend(q, k, v, kwargs.get("mask"), **masks)  # (B, H, T, hd)
    return self.out(out.swapaxes(1, 2).reshape(b, t, -1))


_attention_fused_qkv.general = MultiHeadAttention.__call__


@contextlib.contextmanager
def formulation(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, the project's modules compute as the named formulations say (for
    tracing: patch while a step is traced, never while another is)."""
    unknown = set(names) - set(FORMULATIONS)
    if unknown:
        raise ValueError(
            f"expected formulations from {sorted(FORMULATIONS)}, got {sorted(unknown)}"
        )
    saved = []

    def patch(owner, attribute, value):
        saved.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    if "gelu via erf" in names:
        patch(ENCODER, "activation", _activation_erf)
    if "projections on rows" in names:
        patch(nnx.Linear, "__call__", _linear_rows)
    if "weight grads on YNNPACK" in names:
        patch(nnx.Linear, "__call__", _linear_ynn)
    if "layer norm custom_vjp" in names:
        patch(nnx.LayerNorm, "__call__", _layer_norm_vjp)
    if "fused QKV" in names:
        patch(MultiHeadAttention, "__call__", _attention_fused_qkv)
    if "remat dots saveable" in names:  # ``Encoder`` looks ``_checkpointed`` up per call
        patch(ENCODER, "_checkpointed", _checkpointed_dots)
    try:
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            setattr(owner, attribute, value)


def _checkpointed_dots(module):
    """``module``'s call under ``jax.checkpoint`` with ``dots_saveable``: matmul outputs are
    kept, element-wise work is recomputed in the backward. Array keyword arguments are
    traced, the others fixed; no dropout (the benchmark's presets have none)."""

    def call(*args, **kwargs):
        arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
        static = {k: v for k, v in kwargs.items() if k not in arrays}
        graphdef, state = nnx.split(module)

        def run(state, args, arrays):
            return nnx.merge(graphdef, state)(*args, **arrays, **static)

        policy = jax.checkpoint_policies.dots_saveable
        return jax.checkpoint(run, policy=policy)(state, args, arrays)

    return call


def remat_of(names: tuple[str, ...]) -> str:
    """The model's ``remat`` for a candidate: per layer when a checkpoint policy is asked."""
    return "block" if "remat dots saveable" in names else "none"


# --- the step ---------------------------------------------------------------------------------


def train_step(cfg, backend: str, remat: str, batch: int, seq_len: int, weights: dict):
    """``(function, arguments, donated argument numbers)`` of the benchmark's train step."""
    model = run_jax.build_model(f"ours-{backend}", cfg, weights, dtype="float32", remat=remat)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len)))
    return run_jax.JaxRunner("cpu")._pure_function("train_step", graphdef, params, rest, ids)


def compile_candidate(candidate: Candidate, cfg, backend: str, batch: int, seq_len: int, weights):
    """``(executable, arguments)``: the step traced under the candidate's formulations and
    compiled with the committed options plus the candidate's."""
    fn, args, donate = train_step(
        cfg, backend, remat_of(candidate.formulations), batch, seq_len, weights
    )
    options = {**jax_impl.train.compiler_options("cpu"), **candidate.options}
    with formulation(candidate.formulations):
        jitted = jax.jit(fn, donate_argnums=donate, compiler_options=options)
        return jitted.lower(*args).compile(), args


def _stepper(executable, state: dict):
    """One call of a compiled step on ``state["args"]``, the new parameters and optimizer
    state (donated) threaded into the next call, whichever candidate makes it."""

    def run():
        params, opt_state, loss = executable(*state["args"])
        state["args"] = (params, opt_state, *state["args"][2:])
        jax.block_until_ready(loss)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert-base", help="preset or JSON file")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--backends", default="math,fused")
    parser.add_argument("--candidates", default="all", help="comma-separated names, or all")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config(args.config)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
    every = candidates()
    names = list(every) if args.candidates == "all" else args.candidates.split(",")
    if names[0] != "as committed":
        names.insert(0, "as committed")
    missing = [n for n in names if n not in every]
    if missing:
        raise ValueError(f"expected candidates from {list(every)}, got {missing}")
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
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    from shared import reference

    weights = reference.init_weights(cfg, seed=0)
    n = peak_matmul_size("cpu")
    a, b = (jax.random.normal(k, (n, n)) for k in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    for backend in args.backends.split(","):
        compiled, state = {}, {}
        for name in names:
            executable, step_args = compile_candidate(
                every[name], cfg, backend, args.batch, args.seq_len, weights
            )
            compiled[name] = executable
            if "args" not in state:  # one copy, threaded through every candidate
                state["args"] = jax.tree.map(jnp.copy, step_args)
            elif jax.tree.structure(step_args) != jax.tree.structure(state["args"]):
                raise ValueError(f"{name}: the step's arguments differ in structure")
            work = run_jax.planned_working_bytes(executable)
            print(
                f"compiled {backend} / {name}: working memory {work / 2**20:,.0f} MiB", flush=True
            )
            del step_args

        calls = {name: _stepper(compiled[name], state) for name in names}
        calls["matmul"] = lambda: jax.block_until_ready(matmul(a, b))
        timings = time_interleaved(calls, args.repeats)
        peak_flops = matmul_flops(n, n, n)
        peak_wall = peak_flops / timings["matmul"].wall_stats.median
        peak_cpu = peak_flops / timings["matmul"].cpu_stats.median
        base = timings[names[0]].cpu_stats.median
        print(
            f"\n{backend}: {args.repeats} interleaved rounds, load average "
            f"{os.getloadavg()[0]:.1f}; ms per step, median [IQR]; % of the peak measured "
            "the same way; CPU time against the committed step"
        )
        print(
            f"{'candidate':38s} {'wall ms':>8s} {'[IQR]':>7s} {'CPU ms':>8s} {'[IQR]':>7s} "
            f"{'%peak':>6s} {'%peak':>6s} {'CPU':>6s}"
        )
        print(f"{'':38s} {'':8s} {'':7s} {'':8s} {'':7s} {'wall':>6s} {'CPU':>6s} {'vs 1st':>6s}")
        for name in names:
            wall, cpu = timings[name].wall_stats, timings[name].cpu_stats
            print(
                f"{name:38s} {wall.median * 1e3:8.1f} {wall.iqr * 1e3:7.1f} "
                f"{cpu.median * 1e3:8.1f} {cpu.iqr * 1e3:7.1f} "
                f"{flops / wall.median / peak_wall:6.1%} {flops / cpu.median / peak_cpu:6.1%} "
                f"{cpu.median / base - 1:+6.1%}"
            )
        mm = timings["matmul"]
        print(
            f"matmul {n}^3: wall {mm.wall_stats.median * 1e3:.1f} ms [{mm.wall_stats.iqr * 1e3:.1f}] "
            f"({peak_wall / 1e9:.1f} GFLOP/s), CPU {mm.cpu_stats.median * 1e3:.1f} ms "
            f"[{mm.cpu_stats.iqr * 1e3:.1f}]\n",
            flush=True,
        )
        del compiled, state, calls
        jax.clear_caches()


if __name__ == "__main__":
    main()
