"""A frozen copy of ``jax_impl/flash.py`` as it was before its loops were laid out for
XLA:CPU (128 x 128 blocks, products with transposed operands inside the loops), kept only
so that ``studies/flash_speed.py`` can time the old kernel beside the new one. Not used by
the models; its tests were ``parity_tests/test_flash.py``'s at that time.

FlashAttention-2 in JAX, written out: attention block by block, memory linear in T.

Mirrors ``torch_impl/flash.py`` step for step. Read it beside the paper: Tri Dao,
"FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning" (2023),
Algorithm 1 (forward) and Algorithm 2 (backward); the numbered steps below are theirs.

Notation: B batch, H heads, T query length, S key length, hd head_dim; Br, Bc the query
and key block sizes (the paper's B_r, B_c); i indexes query blocks, j key blocks.

The (T, S) weights are never stored. The forward keeps, per query row, the running maximum
m and the running sum l of exp(scores - m), rescaling the partial output whenever m grows
("online softmax"), and saves only the output O and the log-sum-exp L = m + log(l). The
backward recomputes each block's weights P_ij = exp(S_ij - L_i) from L.

Masks: ``key_padding_mask`` (B, S) True = real key; ``is_causal`` (query t sees keys
s <= t); ``window`` (sliding-window attention: keys |t - s| <= window); ``mask`` a general
boolean (B|1, H|1, T|1, S) mask, True = may attend. All combine. Key blocks that causality
or the window exclude entirely are skipped, not computed (:func:`key_blocks`,
:func:`query_blocks`): a windowed call costs O(T * window), linear in T. A query row with
no allowed key gets a zero output and zero gradients, as the math path does. Keys no
query may attend to are never read (:func:`hide_masked_keys`, which every backend calls).
Scores and sums run in float32 (float64 for float64 inputs); the output has the inputs' dtype.

Grouped-query attention (Ainslie et al. 2023): k and v may have G heads, G dividing H.
The H query heads are viewed as (G, H/G), so that each K/V block meets its H/G query
heads by broadcasting: K and V are never repeated, and dK, dV sum over the group.

JAX specifics: the loops are ``lax`` loops (``lax.map`` over query blocks, ``fori_loop``
over key blocks), so the compiled program holds one block of scores at a time and its
memory is linear in T; a causal or windowed loop's bounds depend on the block index (a
``while`` loop),
which reverse-mode autodiff could not differentiate, hence the ``jax.custom_vjp``. T and S
are padded up to whole blocks; padded keys are masked out and padded queries dropped.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "BLOCK_K",
    "BLOCK_Q",
    "check_window",
    "flash_attention",
    "hide_masked_keys",
    "key_blocks",
    "query_blocks",
]

BLOCK_Q = 128  # Br: query rows per block
BLOCK_K = 128  # Bc: key rows per block


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    key_padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """softmax(Q K^T / sqrt(hd)) V by blocks; q (B, H, T, hd), k, v (B, G, S, hd) -> (B, H, T, hd).

    Args:
        mask: optional boolean (B|1, H|1, T|1, S), True = may attend.
        key_padding_mask: optional boolean (B, S), True = real key.
        is_causal: query t attends to keys s <= t only.
        window: optional int >= 1: query t attends to keys |t - s| <= window only.
        block_q, block_k: Br and Bc (default :data:`BLOCK_Q`, :data:`BLOCK_K`, read at call
            time); any T and S work (the last block is padded).
    """
    block_q = BLOCK_Q if block_q is None else block_q
    block_k = BLOCK_K if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"K/V heads must divide query heads: got {k.shape[1]} K/V heads, {q.shape[1]} "
            "query heads"
        )
    geometry = (is_causal, None if window is None else check_window(window), block_q, block_k)
    k, v = hide_masked_keys(k, v, mask, key_padding_mask, is_causal=is_causal, q_len=q.shape[2])
    return _flash_attention(q, k, v, mask, key_padding_mask, *geometry)


def check_window(window) -> int:
    """``window`` if it is an int >= 1, else a ValueError saying so."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    return window


def hide_masked_keys(
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    key_padding_mask: jax.Array | None,
    *,
    is_causal: bool,
    q_len: int,
) -> tuple[jax.Array, jax.Array]:
    """k, v (B, G, S, hd) with the rows of keys that no query may attend to set to zero.

    Every backend calls this first, so that a masked key's K and V are never read: a NaN or
    Inf there (padding's embeddings, a garbage cache row) cannot reach any output or
    gradient, whatever a kernel does with a masked score (0 * NaN is NaN; -inf + NaN is
    NaN). A key is visible when some query t < ``q_len`` may attend to it under ``mask``
    (B|1, H|1, T|1, S), ``key_padding_mask`` (B, S) and causality (s <= t) together; with
    G < H grouped K/V heads, when some query head of its group may. Keys some queries see
    are left as they are: a non-finite value there is the caller's.
    """
    s = k.shape[2]
    visible = None  # (B|1, H|1, S), or None: every key is visible
    if mask is not None:
        if is_causal and mask.shape[-2] > 1:  # already (.., T, S): the causal and is no larger
            causal = jnp.tril(jnp.ones((q_len, s), dtype=bool))[None, None]
            visible = (mask & causal).any(axis=-2)
        else:
            visible = mask.any(axis=-2)
        if visible.shape[1] not in (1, k.shape[1]):  # H query heads -> G K/V groups
            visible = visible.reshape(visible.shape[0], k.shape[1], -1, s).any(axis=2)
    if is_causal and (mask is None or mask.shape[-2] == 1):
        reach = jnp.arange(s) < q_len  # (S,): some query t >= s exists
        visible = reach[None, None] if visible is None else visible & reach[None, None]
    if key_padding_mask is not None:
        real = key_padding_mask.astype(bool)[:, None, :]  # (B, 1, S)
        visible = real if visible is None else visible & real
    if visible is None:
        return k, v
    hidden = ~visible[..., None]  # (B|1, G|1, S, 1)
    return jnp.where(hidden, 0.0, k), jnp.where(hidden, 0.0, v)


def accumulator_dtype(x: jax.Array):
    """float64 for float64 inputs, float32 otherwise (bfloat16 accumulates in float32)."""
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    """x padded with ``value`` at the end of ``axis`` up to ``size``."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def grouped(q: jax.Array, g: int) -> jax.Array:
    """(B, H, T, x) -> (B, G, H/G, T, x): query head h = j * H/G + r sits at [j, r]."""
    b, h = q.shape[:2]
    return q.reshape(b, g, h // g, *q.shape[2:])


def grouped_mask(mask: jax.Array | None, g: int) -> jax.Array | None:
    """A (B|1, H|1, T|1, S) mask as (B|1, G|1, H/G|1, T|1, S), to match :func:`grouped`."""
    if mask is None:
        return None
    return grouped(mask, g) if mask.shape[1] > 1 else mask[:, :, None]


def padded_masks(mask, key_padding_mask, k, t_pad: int, s_pad: int):
    """The grouped mask padded to (B|1, G|1, H/G|1, Tp|1, Sp), and real keys as (B|1, Sp)."""
    s = k.shape[2]
    real = jnp.ones((1, s), dtype=bool) if key_padding_mask is None else key_padding_mask
    real = pad_to(real.astype(bool), 1, s_pad, False)  # padded keys are never attended
    if mask is not None:
        mask = pad_to(mask, 4, s_pad, False)
        mask = mask if mask.shape[3] == 1 else pad_to(mask, 3, t_pad, False)
    return mask, real


def block_mask(mask, real, is_causal: bool, window, i0, j0, block_q: int, block_k: int):
    """The allowed (B|1, G|1, H/G|1, Br, Bc) entries of the block at rows i0.., keys j0.."""
    allowed = lax.dynamic_slice_in_dim(real, j0, block_k, axis=1)[
        :, None, None, None, :
    ]  # (B|1, 1, 1, 1, Bc)
    if mask is not None:
        rows = mask if mask.shape[3] == 1 else lax.dynamic_slice_in_dim(mask, i0, block_q, axis=3)
        allowed = allowed & lax.dynamic_slice_in_dim(rows, j0, block_k, axis=4)
    if is_causal or window is not None:
        t = i0 + jnp.arange(block_q)[:, None]  # (Br, 1)
        s = j0 + jnp.arange(block_k)[None, :]  # (1, Bc)
        near = jnp.ones((block_q, block_k), dtype=bool)
        if is_causal:
            near = near & (s <= t)
        if window is not None:
            near = near & (jnp.abs(t - s) <= window)
        allowed = allowed & near[None, None, None]  # (B|1, G|1, H/G|1, Br, Bc)
    return allowed


def key_blocks(i_start, i_stop, s: int, block_k: int, is_causal: bool, window):
    """``(first, stop)`` key-block indices that query rows [i_start, i_stop) need: causal
    skips keys > i_stop - 1; a window skips keys outside [i_start - window, i_stop - 1 + window]."""
    lo, hi = 0, s
    if is_causal:
        hi = jnp.minimum(hi, i_stop)
    if window is not None:
        lo, hi = jnp.maximum(lo, i_start - window), jnp.minimum(hi, i_stop + window)
    return lo // block_k, jnp.where(hi > lo, -(-hi // block_k), lo // block_k)


def query_blocks(j_start, j_stop, t: int, block_q: int, is_causal: bool, window):
    """``(first, stop)`` query-block indices that see keys [j_start, j_stop): causal skips
    rows < j_start; a window skips rows outside [j_start - window, j_stop - 1 + window]."""
    lo, hi = 0, t
    if is_causal:
        lo = jnp.maximum(lo, j_start)
    if window is not None:
        lo, hi = jnp.maximum(lo, j_start - window), jnp.minimum(hi, j_stop + window)
    return lo // block_q, jnp.where(hi > lo, -(-hi // block_q), lo // block_q)


def flash_forward(q, k, v, mask, key_padding_mask, is_causal, block_q, block_k, window=None):
    """Algorithm 1. Returns ``(O (B, H, T, hd) in v's dtype, L (B, H, T) log-sum-exp)``.
    ``window``: keys |t - s| <= window only (None: no window).

    1. Split Q into blocks Q_i of Br rows, K and V into blocks K_j, V_j of Bc rows.
    2. For each Q_i: m_i = -inf, l_i = 0, O_i = 0 (in the accumulator dtype).
    3.   For each K_j, V_j (causal, window: only the blocks with an allowed key):
    4.     S_ij = Q_i K_j^T / sqrt(hd), masked entries -inf.
    5.     m_new = max(m_i, rowmax(S_ij)); P_ij = exp(S_ij - m_new).
    6.     l_i = exp(m_i - m_new) l_i + rowsum(P_ij); O_i = exp(m_i - m_new) O_i + P_ij V_j.
    7.   O_i = O_i / l_i (0 where l_i = 0: no allowed key); L_i = m_i + log(l_i) (+inf there).
    """
    acc = accumulator_dtype(q)
    b, h, t, hd = q.shape
    g, s = k.shape[1], k.shape[2]
    n_q, n_k = -(-t // block_q), -(-s // block_k)
    scale = 1.0 / math.sqrt(hd)
    mask, real = padded_masks(
        grouped_mask(mask, g), key_padding_mask, k, n_q * block_q, n_k * block_k
    )
    qg = pad_to(grouped(q, g), 3, n_q * block_q)  # (B, G, H/G, Tp, hd)
    kg = pad_to(k, 2, n_k * block_k)[:, :, None]  # (B, G, 1, Sp, hd)
    vg = pad_to(v, 2, n_k * block_k)[:, :, None]

    def query_block(i):  # step 1-2
        i0 = i * block_q
        q_i = lax.dynamic_slice_in_dim(qg, i0, block_q, axis=3).astype(acc) * scale
        m_i = jnp.full(q_i.shape[:-1], -jnp.inf, dtype=acc)  # (B, G, H/G, Br)
        l_i = jnp.zeros_like(m_i)
        o_i = jnp.zeros_like(q_i)  # (B, G, H/G, Br, hd)

        def key_block(j, carry):  # step 3
            m_i, l_i, o_i = carry
            j0 = j * block_k
            k_j = lax.dynamic_slice_in_dim(kg, j0, block_k, axis=3).astype(acc)  # (B, G, 1, Bc, hd)
            v_j = lax.dynamic_slice_in_dim(vg, j0, block_k, axis=3).astype(acc)
            s_ij = q_i @ k_j.swapaxes(-2, -1)  # step 4: (B, G, H/G, Br, Bc)
            allowed = block_mask(mask, real, is_causal, window, i0, j0, block_q, block_k)
            s_ij = jnp.where(allowed, s_ij, -jnp.inf)
            m_new = jnp.maximum(m_i, s_ij.max(axis=-1))  # step 5
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with no key yet
            p_ij = jnp.exp(s_ij - m_safe[..., None])
            alpha = jnp.exp(m_i - m_safe)  # step 6: rescale what came before
            l_i = alpha * l_i + p_ij.sum(axis=-1)
            o_i = alpha[..., None] * o_i + p_ij @ v_j
            return m_new, l_i, o_i

        first, stop = key_blocks(i0, jnp.minimum(i0 + block_q, t), s, block_k, is_causal, window)
        m_i, l_i, o_i = lax.fori_loop(first, stop, key_block, (m_i, l_i, o_i))
        has_key = l_i > 0  # step 7
        l_safe = jnp.where(has_key, l_i, 1.0)
        o_i = jnp.where(has_key[..., None], o_i / l_safe[..., None], 0.0)
        return o_i, jnp.where(has_key, m_i + jnp.log(l_safe), jnp.inf)

    o, lse = lax.map(query_block, jnp.arange(n_q))  # (n_q, B, G, H/G, Br, hd), (n_q, B, G, H/G, Br)
    o = jnp.moveaxis(o, 0, 3).reshape(b, h, n_q * block_q, hd)[:, :, :t]  # (B, H, T, hd)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, h, n_q * block_q)[:, :, :t]  # (B, H, T)
    return o.astype(v.dtype), lse


def flash_backward(
    q, k, v, out, lse, d_out, mask, key_padding_mask, is_causal, block_q, block_k, window=None
):
    """Algorithm 2. Returns ``(dQ, dK, dV)`` in the inputs' dtypes.

    1. D = rowsum(dO * O) (B, H, T): the softmax backward's per-row term.
    2. For each K_j, V_j: dK_j = 0, dV_j = 0.
    3.   For each Q_i (causal, window: only the blocks with a query that sees K_j):
    4.     S_ij = Q_i K_j^T / sqrt(hd); P_ij = exp(S_ij - L_i), masked entries 0.
    5.     dV_j += P_ij^T dO_i;  dP_ij = dO_i V_j^T.
    6.     dS_ij = P_ij * (dP_ij - D_i).
    7.     dQ_i += dS_ij K_j / sqrt(hd);  dK_j += dS_ij^T Q_i / sqrt(hd).
    With grouped K/V heads, dK_j and dV_j also sum over the H/G query heads of each group.
    """
    acc = accumulator_dtype(q)
    b, h, t, hd = q.shape
    g, s = k.shape[1], k.shape[2]
    n_q, n_k = -(-t // block_q), -(-s // block_k)
    scale = 1.0 / math.sqrt(hd)
    d_out = grouped(d_out, g).astype(acc)  # (B, G, H/G, T, hd)
    delta = (d_out * grouped(out, g).astype(acc)).sum(axis=-1)  # step 1: (B, G, H/G, T)
    mask, real = padded_masks(
        grouped_mask(mask, g), key_padding_mask, k, n_q * block_q, n_k * block_k
    )
    qg, d_out = pad_to(grouped(q, g), 3, n_q * block_q), pad_to(d_out, 3, n_q * block_q)
    lse = pad_to(grouped(lse, g), 3, n_q * block_q, jnp.inf)
    delta = pad_to(delta, 3, n_q * block_q)
    k, v = pad_to(k, 2, n_k * block_k), pad_to(v, 2, n_k * block_k)
    dq = jnp.zeros(qg.shape, dtype=acc)
    dk = jnp.zeros(k.shape, dtype=acc)
    dv = jnp.zeros(v.shape, dtype=acc)

    def key_block(j, grads):  # step 2
        dq, dk, dv = grads
        j0 = j * block_k
        k_j = lax.dynamic_slice_in_dim(k, j0, block_k, axis=2)[:, :, None].astype(acc)
        v_j = lax.dynamic_slice_in_dim(v, j0, block_k, axis=2)[:, :, None].astype(acc)
        dk_j = jnp.zeros_like(k_j)  # (B, G, 1, Bc, hd)
        dv_j = jnp.zeros_like(v_j)

        def query_block(i, carry):  # step 3
            dq, dk_j, dv_j = carry
            i0 = i * block_q
            q_i = lax.dynamic_slice_in_dim(qg, i0, block_q, axis=3).astype(acc)
            s_ij = (q_i * scale) @ k_j.swapaxes(-2, -1)  # step 4: (B, G, H/G, Br, Bc)
            p_ij = jnp.exp(s_ij - lax.dynamic_slice_in_dim(lse, i0, block_q, axis=3)[..., None])
            allowed = block_mask(mask, real, is_causal, window, i0, j0, block_q, block_k)
            p_ij = jnp.where(allowed, p_ij, 0.0)
            do_i = lax.dynamic_slice_in_dim(d_out, i0, block_q, axis=3)  # (B, G, H/G, Br, hd)
            dv_j = dv_j + (p_ij.swapaxes(-2, -1) @ do_i).sum(axis=2, keepdims=True)  # step 5
            dp_ij = do_i @ v_j.swapaxes(-2, -1)  # (B, G, H/G, Br, Bc)
            d_i = lax.dynamic_slice_in_dim(delta, i0, block_q, axis=3)
            ds_ij = p_ij * (dp_ij - d_i[..., None])  # step 6
            dq_i = lax.dynamic_slice_in_dim(dq, i0, block_q, axis=3) + (ds_ij @ k_j) * scale
            dq = lax.dynamic_update_slice_in_dim(dq, dq_i, i0, axis=3)  # step 7
            dk_j = dk_j + (ds_ij.swapaxes(-2, -1) @ q_i).sum(axis=2, keepdims=True) * scale
            return dq, dk_j, dv_j

        j_stop = jnp.minimum(j0 + block_k, s)
        first, stop = query_blocks(j0, j_stop, t, block_q, is_causal, window)
        dq, dk_j, dv_j = lax.fori_loop(first, stop, query_block, (dq, dk_j, dv_j))
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j[:, :, 0], j0, axis=2)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j[:, :, 0], j0, axis=2)
        return dq, dk, dv

    dq, dk, dv = lax.fori_loop(0, n_k, key_block, (dq, dk, dv))
    return (
        dq.reshape(b, h, n_q * block_q, hd)[:, :, :t].astype(q.dtype),
        dk[:, :, :s].astype(k.dtype),
        dv[:, :, :s].astype(v.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash_attention(q, k, v, mask, key_padding_mask, is_causal, window, block_q, block_k):
    geometry = (is_causal, block_q, block_k)
    return flash_forward(q, k, v, mask, key_padding_mask, *geometry, window=window)[0]


def _flash_attention_fwd(q, k, v, mask, key_padding_mask, is_causal, window, block_q, block_k):
    """Saves Q, K, V, O and L (all linear in T); the backward recomputes the weights."""
    geometry = (is_causal, block_q, block_k)
    out, lse = flash_forward(q, k, v, mask, key_padding_mask, *geometry, window=window)
    return out, (q, k, v, out, lse, mask, key_padding_mask)


def _flash_attention_bwd(is_causal, window, block_q, block_k, saved, d_out):
    q, k, v, out, lse, mask, key_padding_mask = saved
    geometry = (is_causal, block_q, block_k)
    dq, dk, dv = flash_backward(
        q, k, v, out, lse, d_out, mask, key_padding_mask, *geometry, window=window
    )
    return dq, dk, dv, None, None


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)
