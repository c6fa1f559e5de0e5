"""Where XLA:CPU's backward pass loses: one BERT-base layer, block by block, op by op.

    python -m studies.backward_profile [--batch 8] [--seq-len 128] [--repeats 15]

Five parts, BERT-base shapes (D=768, H=12, F=3072, exact GELU, post-norm), B=8, T=128:

1. each block of one encoder layer (ours: the layer, attention, feed-forward, one LayerNorm)
   (the project's modules: ``EncoderLayer``, ``MultiHeadAttention``, ``FeedForward`` and the
   layer's own first LayerNorm) under ``jax.jit``, forward and forward + backward,
   PyTorch's eager autograd of the same modules beside it, and the large square matmul of
   ``benchmarks.peaks`` (the measured peak) timed in the same rounds; the analytic ratio of forward + backward to forward is 3 for
   the matrix products (``shared/flops.py``);
2. the element-wise pieces alone (GELU, softmax, LayerNorm, the head split);
3. the layer written out as a function (:func:`layer_function`, tested equal to
   ``EncoderLayer`` in value and gradient) with one kind of non-matmul work taken out at a
   time: the study's apparatus, since the project's layer has no switch to drop its layer
   norms or its activation;
4. the same layer in other formulations of the same function;
5. ``jax.profiler`` traces of the layer's forward and forward + backward, XLA's operations
   (thunks) ranked by their share of the wall time, and totals by kind of operation, so
   that the backward's extra time is named op by op.

Timing is the benchmark harness's (``benchmarks.harness.time_interleaved``). Measuring on a
shared machine: every candidate is timed in the same rounds, alternating, and
each figure is given three ways: the median wall time, the minimum wall time (the least
disturbed call) and the median CPU time of this process (``time.process_time``: what the
call cost the cores, which other processes inflate far less than wall time). Utilisation is
"analytic FLOPs / time" over "peak matmul FLOPs / its time", each side measured the same
way, so the load largely cancels.

How the profile is attributed: XLA:CPU runs independent thunks concurrently, and a thunk
may return before its work finishes (its work then ends at an ``end: <name>`` event). Each
thunk is taken from its start to its end, and every instant of wall time is split equally
among the thunks active at that instant, so the shares add up to the busy wall time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jax_impl
import torch_impl
from benchmarks.harness import Timings, time_interleaved
from benchmarks.peaks import peak_matmul_size
from shared.config import EncoderConfig
from shared.flops import matmul_flops

BLOCKS = ("layer", "attention", "feed-forward", "layer norm")
PEAK_N = peak_matmul_size("cpu")  # the side of the benchmarks' peak matmul on a CPU


def bert_base_layer() -> EncoderConfig:
    """One post-norm BERT-base layer (dropout off)."""
    return EncoderConfig(
        vocab_size=30522,
        d_model=768,
        n_heads=12,
        d_ff=3072,
        n_layers=1,
        max_len=512,
        dropout=0.0,
        activation="gelu",
    )


def block_flops(block: str, cfg: EncoderConfig, b: int, t: int) -> int:
    """Analytic forward FLOPs of a block's matrix products (``shared/flops.py``'s table)."""
    d, f = cfg.d_model, cfg.d_ff
    attention = 4 * matmul_flops(b * t, d, d) + 2 * b * matmul_flops(t, d, t)
    feed_forward = matmul_flops(b * t, d, f) + matmul_flops(b * t, f, d)
    return {
        "layer": attention + feed_forward,
        "attention": attention,
        "feed-forward": feed_forward,
        "layer norm": 0,
    }[block]


# --- the blocks, as pure functions of (parameters, x) --------------------------------------


def jax_block(block: str, cfg: EncoderConfig) -> nnx.Module:
    rngs = nnx.Rngs(0)
    if block == "layer":
        return jax_impl.EncoderLayer(cfg, rngs=rngs)
    if block == "attention":
        return jax_impl.MultiHeadAttention(cfg.d_model, cfg.n_heads, rngs=rngs)
    if block == "feed-forward":
        return jax_impl.FeedForward(cfg, rngs=rngs)
    return jax_impl.EncoderLayer(cfg, rngs=rngs).norm1


def torch_block(block: str, cfg: EncoderConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    if block == "layer":
        return torch_impl.EncoderLayer(cfg)
    if block == "attention":
        return torch_impl.MultiHeadAttention(cfg.d_model, cfg.n_heads)
    if block == "feed-forward":
        return torch_impl.FeedForward(cfg)
    return torch_impl.EncoderLayer(cfg).norm1


def _first(y: Any) -> Any:
    """The block's output: ``EncoderLayer`` returns ``(x, weights)``."""
    return y[0] if isinstance(y, tuple) else y


def jax_functions(module: nnx.Module, cotangent: jax.Array) -> tuple[Callable, Callable, Any]:
    """``(forward, forward_backward, parameters)``; the loss is ``<block(x), cotangent>``, so
    the backward pass starts from a fixed cotangent of the output's shape."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, x):
        y = _first(nnx.merge(graphdef, params, rest)(x))  # (B, T, D)
        return jnp.vdot(y, cotangent)

    return jax.jit(loss), jax.jit(jax.grad(loss, argnums=(0, 1))), params


def torch_functions(module: torch.nn.Module, cotangent: torch.Tensor) -> tuple[Callable, Callable]:
    """Eager ``(forward, forward_backward)`` of ``<block(x), cotangent>``."""

    def forward(x):
        with torch.no_grad():
            return (_first(module(x)) * cotangent).sum()

    def forward_backward(x):
        module.zero_grad(set_to_none=True)
        x.grad = None
        (_first(module(x)) * cotangent).sum().backward()

    return forward, forward_backward


# --- timing -------------------------------------------------------------------------------


def summary(timings: Timings) -> tuple[float, float, float]:
    """(median wall, minimum wall, median CPU) seconds per call."""
    wall, cpu = timings.wall_stats, timings.cpu_stats
    return wall.median, wall.minimum, cpu.median


def time_blocks(cfg: EncoderConfig, b: int, t: int, repeats: int) -> dict[str, Timings]:
    """Forward and forward + backward of every block in both frameworks, and the peak matmul."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, t, cfg.d_model)).astype(np.float32)
    g = rng.standard_normal((b, t, cfg.d_model)).astype(np.float32)
    x_j, g_j = jnp.asarray(x), jnp.asarray(g)
    x_t, g_t = torch.tensor(x, requires_grad=True), torch.tensor(g)
    calls: dict[str, Callable[[], None]] = {}
    a, c = (jnp.asarray(rng.standard_normal((PEAK_N, PEAK_N)), jnp.float32) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    calls["peak matmul"] = lambda: jax.block_until_ready(matmul(a, c))
    for block in BLOCKS:
        fwd, both, params = jax_functions(jax_block(block, cfg), g_j)
        calls[f"jax {block} fwd"] = lambda f=fwd, p=params: jax.block_until_ready(f(p, x_j))
        calls[f"jax {block} fwd+bwd"] = lambda f=both, p=params: jax.block_until_ready(f(p, x_j))
        fwd_t, both_t = torch_functions(torch_block(block, cfg), g_t)
        calls[f"torch {block} fwd"] = lambda f=fwd_t: f(x_t)
        calls[f"torch {block} fwd+bwd"] = lambda f=both_t: f(x_t)
    return time_interleaved(calls, repeats)


def print_blocks(timings: dict[str, Timings], cfg: EncoderConfig, b: int, t: int) -> None:
    _, peak_wall_min, peak_cpu = summary(timings["peak matmul"])
    peak_flops = matmul_flops(PEAK_N, PEAK_N, PEAK_N)
    print(
        f"peak matmul ({PEAK_N}^3): {peak_flops / peak_wall_min / 1e9:.0f} GFLOP/s at the "
        f"minimum wall time, {peak_flops / peak_cpu / 1e9:.0f} GFLOP per CPU-second"
    )
    print(
        f"{'block':24s} {'wall med':>9s} {'wall min':>9s} {'cpu med':>9s} "
        f"{'ratio':>6s} {'ratio':>6s} {'util':>5s} {'util':>5s}"
    )
    print(
        f"{'':24s} {'ms':>9s} {'ms':>9s} {'ms':>9s} {'(min)':>6s} {'(cpu)':>6s} {'(min)':>5s} {'(cpu)':>5s}"
    )
    for framework in ("jax", "torch"):
        for block in BLOCKS:
            flops = block_flops(block, cfg, b, t)
            fwd = summary(timings[f"{framework} {block} fwd"])
            for phase, multiple in (("fwd", 1), ("fwd+bwd", 3)):
                wall_med, wall_min, cpu = summary(timings[f"{framework} {block} {phase}"])
                ratio = (
                    f"{wall_min / fwd[1]:6.2f} {cpu / fwd[2]:6.2f}"
                    if phase == "fwd+bwd"
                    else f"{'':6s} {'':6s}"
                )
                util = (
                    f"{multiple * flops / wall_min / (peak_flops / peak_wall_min):5.2f} "
                    f"{multiple * flops / cpu / (peak_flops / peak_cpu):5.2f}"
                    if flops
                    else f"{'-':>5s} {'-':>5s}"
                )
                label = f"{framework} {block} {phase}"
                print(
                    f"{label:24s} {1e3 * wall_med:9.1f} {1e3 * wall_min:9.1f} {1e3 * cpu:9.1f} "
                    f"{ratio} {util}"
                )


# --- the element-wise pieces alone ---------------------------------------------------------


def pieces(cfg: EncoderConfig, b: int, t: int) -> dict[str, tuple[Callable, tuple[int, ...]]]:
    """The layer's non-matmul work, each piece as ``(function of one array, input shape)``.

    The activation appears twice: as ``jax.nn.gelu`` computes it (through ``erfc``) and as
    the paper and PyTorch write it (through ``erf``); the same function, two formulations.
    """
    h, hd, d = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.d_model
    norm = jax_impl.EncoderLayer(cfg, rngs=nnx.Rngs(0)).norm1
    return {
        "gelu via erfc (jax.nn.gelu)": (
            lambda x: jax.nn.gelu(x, approximate=False),
            (b * t, cfg.d_ff),
        ),
        "gelu via erf": (
            lambda x: 0.5 * x * (1.0 + jax.lax.erf(x / np.sqrt(2.0).astype(np.float32))),
            (b * t, cfg.d_ff),
        ),
        "softmax over keys": (lambda s: jax.nn.softmax(s, axis=-1), (b, h, t, t)),
        "layer norm": (norm, (b, t, d)),
        "split heads (B,T,D)->(B,H,T,hd)": (
            lambda x: x.reshape(b, t, h, hd).swapaxes(1, 2),
            (b, t, d),
        ),
    }


def time_pieces(cfg: EncoderConfig, b: int, t: int, repeats: int) -> dict[str, Timings]:
    """Each piece's output, and its input gradient for a fixed cotangent (which XLA computes
    without the output where it can: it is what the backward pass asks of the piece)."""
    rng = np.random.default_rng(0)
    calls: dict[str, Callable[[], None]] = {}
    for name, (fn, shape) in pieces(cfg, b, t).items():
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        g = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, x).shape), jnp.float32)

        def loss(x, fn=fn, g=g):
            return jnp.vdot(fn(x), g)

        fwd, grad = jax.jit(fn), jax.jit(jax.grad(loss))
        calls[f"{name} fwd"] = lambda f=fwd, x=x: jax.block_until_ready(f(x))
        calls[f"{name} grad"] = lambda f=grad, x=x: jax.block_until_ready(f(x))
    return time_interleaved(calls, repeats)


def print_pieces(timings: dict[str, Timings], cfg: EncoderConfig, b: int, t: int) -> None:
    print("\nelement-wise pieces alone, under jax.jit (CPU ms per call, median):")
    print(f"{'piece':34s} {'output':>7s} {'input gradient':>15s}")
    for name in pieces(cfg, b, t):
        fwd = summary(timings[f"{name} fwd"])[2]
        grad = summary(timings[f"{name} grad"])[2]
        print(f"{name:34s} {1e3 * fwd:7.2f} {1e3 * grad:15.2f}")


# --- the layer with one kind of non-matmul work taken out ---------------------------------

ABLATIONS = {
    "as built": {},
    "no layer norms": {"norm": False},
    "no GELU": {"gelu": False},
    "no softmax": {"softmax": False},
    "no biases": {"bias": False},
    "matmuls only": {"norm": False, "gelu": False, "softmax": False, "bias": False},
}


FORMULATIONS = {
    "as built": {},
    "heads by einsum": {"heads": "einsum"},
    "layer norm custom_vjp": {"norm_vjp": True},
    "gelu via erf": {"gelu_erf": True},
    "all three": {"heads": "einsum", "norm_vjp": True, "gelu_erf": True},
    "weight grads on YNNPACK": {"weight_grad_transposed": True},
}


@jax.custom_vjp
def _rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w  # (N, K) @ (K, M)


def _rows_matmul_forward(x, w):
    return x @ w, (x, w)


def _rows_matmul_backward(residuals, dy):
    # dW = X^T dY with X^T materialised first (the barrier keeps XLA from folding the
    # transpose back into the product), so that the product has the canonical left operand
    # that XLA:CPU's YNNPACK fusion accepts; autodiff's form runs on Eigen
    x, w = residuals
    x_t = jax.lax.optimization_barrier(x.T)  # (K, N)
    return dy @ w.T, x_t @ dy


_rows_matmul.defvjp(_rows_matmul_forward, _rows_matmul_backward)


def _normalize(x: jax.Array, eps: float) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


@jax.custom_vjp
def _normalize_vjp(x: jax.Array, eps: float) -> jax.Array:
    return _normalize(x, eps)


def _normalize_forward(x, eps):
    x_hat = _normalize(x, eps)
    rstd = jax.lax.rsqrt(jnp.square(x - x.mean(-1, keepdims=True)).mean(-1, keepdims=True) + eps)
    return x_hat, (x_hat, rstd)


def _normalize_backward(residuals, dy):
    # the textbook LayerNorm backward in one expression, instead of autodiff's op by op
    x_hat, rstd = residuals
    mean_dy = dy.mean(-1, keepdims=True)
    mean_dy_x_hat = (dy * x_hat).mean(-1, keepdims=True)
    return rstd * (dy - mean_dy - x_hat * mean_dy_x_hat), None


_normalize_vjp.defvjp(_normalize_forward, _normalize_backward)


def layer_function(
    cfg: EncoderConfig,
    norm=True,
    gelu=True,
    softmax=True,
    bias=True,
    *,
    heads="swapaxes",
    norm_vjp=False,
    gelu_erf=False,
    weight_grad_transposed=False,
) -> Callable:
    """The post-norm layer as a function of (parameters, x), written out like the modules
    (same products, same orientation), with parts switchable (what each part costs) and
    alternative formulations of the same function: heads kept as (B, T, H, hd) with the
    products written as einsums and the scale folded into q; LayerNorm with a hand-written
    backward; exact GELU through ``erf`` rather than ``jax.nn.gelu``'s ``erfc``; weight
    gradients computed from explicitly transposed activations (see ``_rows_matmul``)."""
    h, hd = cfg.n_heads, cfg.d_model // cfg.n_heads

    def broadcast(v, like):  # (n,) -> (1, ..., 1, n), as rank promotion would
        return v.reshape((1,) * (like.ndim - 1) + (-1,))

    def dense(p, name, x):
        if weight_grad_transposed:
            rows = _rows_matmul(x.reshape(-1, x.shape[-1]), p[name])  # (N, out)
            y = rows.reshape(*x.shape[:-1], -1)
        else:
            y = x @ p[name]
        return y + broadcast(p[name + "_bias"], y) if bias else y

    def layer_norm(x, scale, shift):
        if not norm:
            return x
        normed = (_normalize_vjp if norm_vjp else _normalize)(x, cfg.layer_norm_eps)
        return normed * broadcast(scale, x) + broadcast(shift, x)

    def attention(p, x):
        b, t, d = x.shape
        if heads == "einsum":
            q, k, v = (dense(p, n, x).reshape(b, t, h, hd) for n in "qkv")  # (B, T, H, hd)
            scores = jnp.einsum("bthd,bshd->bhts", q / np.sqrt(hd).astype(np.float32), k)
            weights = jax.nn.softmax(scores, axis=-1) if softmax else scores
            out = jnp.einsum("bhts,bshd->bthd", weights, v)  # (B, T, H, hd)
            return dense(p, "o", out.reshape(b, t, d))
        q, k, v = (dense(p, n, x).reshape(b, t, h, hd).swapaxes(1, 2) for n in "qkv")
        scores = q @ k.swapaxes(-2, -1) / np.sqrt(hd).astype(np.float32)  # (B, H, T, T)
        weights = jax.nn.softmax(scores, axis=-1) if softmax else scores
        return dense(p, "o", (weights @ v).swapaxes(1, 2).reshape(b, t, d))

    def feed_forward(p, x):
        b, t, d = x.shape
        hidden = dense(p, "ffn_in", x.reshape(b * t, d))  # (B*T, F)
        if gelu and gelu_erf:
            hidden = 0.5 * hidden * (1.0 + jax.lax.erf(hidden / np.sqrt(2.0).astype(np.float32)))
        elif gelu:
            hidden = jax.nn.gelu(hidden, approximate=False)
        return dense(p, "ffn_out", hidden).reshape(b, t, d)

    def layer(p, x):
        x = layer_norm(x + attention(p, x), p["norm1"], p["norm1_bias"])
        return layer_norm(x + feed_forward(p, x), p["norm2"], p["norm2_bias"])

    return layer


def layer_parameters(cfg: EncoderConfig) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    d, f = cfg.d_model, cfg.d_ff
    shapes = {
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "o": (d, d),
        "ffn_in": (d, f),
        "ffn_out": (f, d),
    }
    params = {}
    for name, (n_in, n_out) in shapes.items():
        params[name] = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
        params[name + "_bias"] = 0.1 * rng.standard_normal(n_out)
    for name in ("norm1", "norm2"):
        params[name] = 1.0 + 0.1 * rng.standard_normal(d)
        params[name + "_bias"] = 0.1 * rng.standard_normal(d)
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def time_variants(
    cfg: EncoderConfig, b: int, t: int, repeats: int, variants: dict[str, dict]
) -> dict[str, Timings]:
    """Forward and forward + backward of each variant of :func:`layer_function`."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((b, t, cfg.d_model)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, t, cfg.d_model)), jnp.float32)
    params = layer_parameters(cfg)
    calls: dict[str, Callable[[], None]] = {}
    for name, options in variants.items():
        layer = layer_function(cfg, **options)

        def loss(p, x, layer=layer):
            return jnp.vdot(layer(p, x), g)

        fwd, both = jax.jit(loss), jax.jit(jax.grad(loss, argnums=(0, 1)))
        calls[f"{name} fwd"] = lambda f=fwd: jax.block_until_ready(f(params, x))
        calls[f"{name} fwd+bwd"] = lambda f=both: jax.block_until_ready(f(params, x))
    return time_interleaved(calls, repeats)


def print_variants(timings: dict[str, Timings], variants: dict[str, dict], title: str) -> None:
    print(f"\nthe layer {title} (CPU ms per call, median):")
    print(f"{'variant':22s} {'fwd':>7s} {'fwd+bwd':>8s} {'ratio':>6s} {'saved':>14s}")
    built = summary(timings["as built fwd+bwd"])[2]
    for name in variants:
        fwd = summary(timings[f"{name} fwd"])[2]
        both = summary(timings[f"{name} fwd+bwd"])[2]
        print(
            f"{name:22s} {1e3 * fwd:7.1f} {1e3 * both:8.1f} {both / fwd:6.2f} "
            f"{1e3 * (built - both):8.1f} ({(built - both) / built:4.0%})"
        )


# --- the profile --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """One HLO instruction of the compiled program that runs as a thunk."""

    name: str
    kind: str  # "GEMM (YNNPACK)", "GEMM (Eigen)", "reduce (YNNPACK)", "loop fusion", ...
    shape: str
    source: str  # the JAX operation it came from (HLO metadata op_name)


def hlo_ops(hlo_text: str) -> dict[str, Op]:
    """The top-level instructions of the entry computation, by name, with their kind."""
    entry = hlo_text[hlo_text.index("\nENTRY ") :]
    computations = dict(re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S))
    ops = {}
    pattern = r"\n\s+(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(([^\n]*)"
    for name, shape, opcode, rest in re.findall(pattern, entry):
        source = re.search(r'op_name="([^"]*)"', rest)
        kind = opcode
        if opcode == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", rest)
            body = computations.get(called.group(1), "") if called else ""
            has_dot = " dot(" in body
            if "__ynn_fusion" in rest:
                kind = "GEMM (YNNPACK)" if has_dot else "reduce (YNNPACK)"
            else:
                kind = "GEMM (fusion)" if has_dot else "loop fusion"
        elif opcode == "dot":
            kind = "GEMM (Eigen)"
        ops[name] = Op(name, kind, shape.split("{")[0], source.group(1) if source else "")
    return ops


def thunk_intervals(xplane_path: str) -> list[tuple[int, int, str]]:
    """(start ns, end ns, thunk name) of every thunk executed in the trace."""
    profile = jax.profiler.ProfileData.from_file(xplane_path)
    skip = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "$", "Pjit", "PythonRef")
    events = []
    for plane in profile.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if not event.name.startswith(skip):
                    events.append((event.start_ns, event.duration_ns, event.name))
    events.sort()
    started: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    intervals = []
    for start, duration, name in events:
        if name.startswith("end: "):
            name = name[len("end: ") :]
            if started[name]:  # the work of an asynchronous thunk ends here
                intervals.append((started[name].pop(0)[0], start + duration, name))
        else:
            started[name].append((start, start + duration))
    for name, spans in started.items():  # synchronous thunks: no end event
        intervals.extend((start, end, name) for start, end in spans)
    return intervals


def shares(intervals: list[tuple[int, int, str]]) -> tuple[collections.Counter, float]:
    """Wall time split equally among the thunks running at each instant: (ns by name, busy ns)."""
    points = sorted(
        [(start, 1, name) for start, _, name in intervals]
        + [(end, -1, name) for _, end, name in intervals]
    )
    active: collections.Counter = collections.Counter()
    share: collections.Counter = collections.Counter()
    busy, last = 0.0, points[0][0]
    for now, change, name in points:
        running = sum(active.values())
        if running:
            for other, count in active.items():
                share[other] += (now - last) * count / running
            busy += now - last
        last = now
        active[name] += change
        if not active[name]:
            del active[name]
    return share, busy


def profile(compiled, args: tuple, calls: int) -> tuple[collections.Counter, float]:
    """Thunk shares (ns per call) and busy wall time (ns per call) of ``compiled(*args)``."""
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        share, busy = shares(thunk_intervals(paths[0]))
    return collections.Counter({k: v / calls for k, v in share.items()}), busy / calls


def print_profile(cfg: EncoderConfig, b: int, t: int, calls: int, top: int) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, t, cfg.d_model)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((b, t, cfg.d_model)), jnp.float32)
    fwd, both, params = jax_functions(jax_block("layer", cfg), g)
    by_kind = {}
    for phase, fn in (("fwd", fwd), ("fwd+bwd", both)):
        compiled = fn.lower(params, x).compile()
        ops = hlo_ops(compiled.as_text())
        share, busy = profile(compiled, (params, x), calls)
        by_kind[phase] = collections.Counter()
        for name, ns in share.items():
            by_kind[phase][ops[name].kind if name in ops else "other"] += ns
        if phase == "fwd+bwd":
            print(
                f"\ntop {top} thunks of one layer's forward + backward ({busy / 1e6:.1f} ms busy):"
            )
            print(f"{'ms':>7s} {'share':>6s}  {'thunk':28s} {'kind':18s} {'shape':22s} JAX op")
            for name, ns in share.most_common(top):
                op = ops.get(name, Op(name, "other", "", ""))
                source = op.source.replace("jit(loss)/", "")
                print(
                    f"{ns / 1e6:7.2f} {ns / busy:6.1%}  {name:28s} {op.kind:18s} {op.shape:22s} "
                    f"{source}"
                )
    print("\nwall time by kind of op (ms per call; backward = fwd+bwd - fwd):")
    kinds = sorted(
        set(by_kind["fwd"]) | set(by_kind["fwd+bwd"]), key=lambda k: -by_kind["fwd+bwd"][k]
    )
    print(f"{'kind':18s} {'fwd':>8s} {'fwd+bwd':>8s} {'backward':>9s} {'bwd/fwd':>8s}")
    for kind in kinds:
        f_ms, fb_ms = by_kind["fwd"][kind] / 1e6, by_kind["fwd+bwd"][kind] / 1e6
        ratio = f"{(fb_ms - f_ms) / f_ms:8.2f}" if f_ms else f"{'-':>8s}"
        print(f"{kind:18s} {f_ms:8.1f} {fb_ms:8.1f} {fb_ms - f_ms:9.1f} {ratio}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--profile-calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    cfg = bert_base_layer()
    b, t = args.batch, args.seq_len
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start"
    )
    print(
        f"one BERT-base layer (D={cfg.d_model}, H={cfg.n_heads}, F={cfg.d_ff}), B={b}, T={t}, float32\n"
    )
    print_blocks(time_blocks(cfg, b, t, args.repeats), cfg, b, t)
    print_pieces(time_pieces(cfg, b, t, args.repeats), cfg, b, t)
    for variants, title in (
        (ABLATIONS, "with one kind of non-matmul work taken out"),
        (FORMULATIONS, "in other formulations of the same function"),
    ):
        print_variants(time_variants(cfg, b, t, args.repeats, variants), variants, title)
    print_profile(cfg, b, t, args.profile_calls, args.top)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
