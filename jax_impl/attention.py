"""Scaled dot-product and multi-head attention in JAX / Flax NNX.

Mirrors ``torch_impl/attention.py`` statement for statement; ``diff`` the two files to see
the framework idioms and nothing else.

Notation: B batch, T query length, S key length, D d_model, H heads, hd head_dim = D / H.
Masks are boolean, True = may attend (``shared/masks.py``), shaped to broadcast to (B, H, T, S).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from shared.inputs import check_mask_shape

__all__ = [
    "BACKENDS",
    "MultiHeadAttention",
    "fused_attention",
    "make_attention_mask",
    "scaled_dot_product_attention",
]

BACKENDS = ("math", "fused")


def scaled_dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(hd)) V, written out.

    Args:
        q: (B, H, T, hd) queries; k, v: (B, H, S, hd) keys and values.
        mask: boolean, broadcastable to (B, H, T, S); True = may attend.

    Returns:
        ``(output (B, H, T, hd), weights (B, H, T, S))``. The softmax runs in at least
        float32. A query row with no allowed key gets all-zero weights, so a zero output
        and finite gradients (the paper leaves this case undefined; Flax's own attention
        averages the values there).
    """
    scores = q @ k.swapaxes(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    scores = scores.astype(jnp.float64 if scores.dtype == jnp.float64 else jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)  # finite fill
    weights = jax.nn.softmax(scores, axis=-1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)  # only changes rows with no allowed key
    weights = weights.astype(v.dtype)
    return weights @ v, weights  # (B, H, T, hd), (B, H, T, S)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """The same function through JAX's fused kernel, ``jax.nn.dot_product_attention``.

    Fused kernels never materialise the weights, so only the output (B, H, T, hd) comes back.
    Rows with no allowed key are given every key (a finite average) and then zeroed, which
    matches :func:`scaled_dot_product_attention` whatever kernel JAX picks. JAX's kernel
    takes (B, T, H, hd), hence the transposes.
    """
    q, k, v = (y.swapaxes(1, 2) for y in (q, k, v))  # (B, T|S, H, hd)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v).swapaxes(1, 2)
    has_key = mask.any(axis=-1, keepdims=True)  # (B|1, H|1, T, 1)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask | ~has_key).swapaxes(1, 2)
    return jnp.where(has_key, out, 0.0)  # (B, H, T, hd)


def make_attention_mask(
    attention_mask: jax.Array | None,
    *,
    is_causal: bool,
    q_len: int,
    k_len: int | None = None,
) -> jax.Array | None:
    """(B, S) real-token mask and/or causality -> one boolean (B|1, 1, T, S) mask, or None."""
    mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
    if is_causal:
        k_len = q_len if k_len is None else k_len
        causal = jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None, None]
        mask = causal if mask is None else mask & causal  # (B|1, 1, T, S)
    return mask


class MultiHeadAttention(nnx.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o, head_i = Attention(Q W_q^i, K W_k^i, V W_v^i).

    Self-attention when ``context`` is omitted, cross-attention otherwise. ``backend="math"``
    runs :func:`scaled_dot_product_attention`; ``backend="fused"`` runs :func:`fused_attention`
    (same numbers, tested), except that a call with ``return_attention=True`` always runs the
    math path, because fused kernels do not produce the weights.
    """

    def __init__(
        self, d_model: int, n_heads: int, *, backend: str = "math", dtype=None, rngs: nnx.Rngs
    ) -> None:
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} must be one of {BACKENDS}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.backend = backend
        self.q = linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.k = linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.v = linear(d_model, d_model, dtype=dtype, rngs=rngs)
        self.out = linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        return_attention: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """x (B, T, D), context (B, S, D) -> (B, T, D) [and weights (B, H, T, S)]."""
        context = x if context is None else context
        b, t, _ = x.shape
        s = context.shape[1]
        h, hd = self.n_heads, self.head_dim
        if mask is not None:
            check_mask_shape(tuple(mask.shape), mask.dtype.kind, b=b, h=h, t=t, s=s)

        # 1. Project, and split the feature axis into heads. The head count comes from the
        #    tensor: under tensor parallelism a device holds only its H / M local heads.
        q = self.q(x).reshape(b, t, -1, hd).swapaxes(1, 2)  # (B, H, T, hd)
        k = self.k(context).reshape(b, s, -1, hd).swapaxes(1, 2)  # (B, H, S, hd)
        v = self.v(context).reshape(b, s, -1, hd).swapaxes(1, 2)  # (B, H, S, hd)

        # 2. Attend, in every head at once.
        if self.backend == "fused" and not return_attention:
            out, weights = fused_attention(q, k, v, mask), None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask)

        # 3. Concatenate the heads and project back.
        out = out.swapaxes(1, 2).reshape(b, t, -1)  # (B, T, D), or (B, T, D / M) per device
        out = self.out(out)
        return (out, weights) if return_attention else out


def linear(d_in: int, d_out: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` initialised as ``torch_impl`` does: Xavier-uniform kernel, zero bias."""
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros,
        param_dtype=dtype or jnp.float32,
        rngs=rngs,
    )
