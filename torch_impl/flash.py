"""FlashAttention-2 in PyTorch, written out: attention block by block, memory linear in T.

Mirrors ``jax_impl/flash.py`` step for step. Read it beside the paper: Tri Dao,
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

Block sizes: 128 x 128 by default. JAX's kernel defaults to 256 x 256 and computes its
backward blocks transposed: both for XLA:CPU's compiled loops, where they were measured
(``jax_impl/flash.py``, ``studies/flash_speed.py``). This kernel's blocks run as eager
PyTorch calls, and were not re-measured.
"""

from __future__ import annotations

import math

import torch

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


@torch.compiler.disable
def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(hd)) V by blocks; q (B, H, T, hd), k, v (B, G, S, hd) -> (B, H, T, hd).

    Args:
        mask: optional boolean (B|1, H|1, T|1, S), True = may attend.
        key_padding_mask: optional boolean (B, S), True = real key.
        is_causal: query t attends to keys s <= t only.
        window: optional int >= 1: query t attends to keys |t - s| <= window only.
        block_q, block_k: Br and Bc (default :data:`BLOCK_Q`, :data:`BLOCK_K`, read at call
            time); any T and S work (the last block may be partial).

    Under ``torch.compile`` this function runs eagerly (a graph break, on purpose): traced,
    its Python block loops unroll into one node per block, and a compiled train step of
    the small benchmark config at T = 256 took over five minutes to compile. The rest of
    the model still compiles around it.
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
    return _FlashAttention.apply(q, k, v, mask, key_padding_mask, *geometry)


def check_window(window) -> int:
    """``window`` if it is an int >= 1, else a ValueError saying so."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    return window


def hide_masked_keys(
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
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
            causal = torch.ones(q_len, s, dtype=torch.bool, device=k.device).tril()[None, None]
            visible = (mask & causal).any(dim=-2)
        else:
            visible = mask.any(dim=-2)
        if visible.shape[1] not in (1, k.shape[1]):  # H query heads -> G K/V groups
            visible = visible.reshape(visible.shape[0], k.shape[1], -1, s).any(dim=2)
    if is_causal and (mask is None or mask.shape[-2] == 1):
        reach = torch.arange(s, device=k.device) < q_len  # (S,): some query t >= s exists
        visible = reach[None, None] if visible is None else visible & reach[None, None]
    if key_padding_mask is not None:
        real = key_padding_mask.bool()[:, None, :]  # (B, 1, S)
        visible = real if visible is None else visible & real
    if visible is None:
        return k, v
    hidden = ~visible[..., None]  # (B|1, G|1, S, 1)
    return k.masked_fill(hidden, 0.0), v.masked_fill(hidden, 0.0)


def accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (bfloat16 accumulates in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def grouped(q: torch.Tensor, g: int) -> torch.Tensor:
    """(B, H, T, x) -> (B, G, H/G, T, x): query head h = j * H/G + r sits at [j, r]."""
    b, h = q.shape[:2]
    return q.reshape(b, g, h // g, *q.shape[2:])


def grouped_mask(mask: torch.Tensor | None, g: int) -> torch.Tensor | None:
    """A (B|1, H|1, T|1, S) mask as (B|1, G|1, H/G|1, T|1, S), to match :func:`grouped`."""
    if mask is None:
        return None
    return grouped(mask, g) if mask.shape[1] > 1 else mask[:, :, None]


def block_mask(
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    is_causal: bool,
    window: int | None,
    rows: slice,
    cols: slice,
    device: torch.device,
) -> torch.Tensor | None:
    """The allowed (B|1, G|1, H/G|1, Br, Bc) entries of block (rows, cols), or None if all are."""
    allowed = None
    if mask is not None:
        allowed = mask[..., rows if mask.shape[-2] > 1 else slice(None), cols]
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, None, cols]  # (B, 1, 1, 1, Bc)
        allowed = padding if allowed is None else allowed & padding
    if is_causal or window is not None:
        t = torch.arange(rows.start, rows.stop, device=device)[:, None]  # (Br, 1)
        s = torch.arange(cols.start, cols.stop, device=device)[None, :]  # (1, Bc)
        near = torch.ones(t.shape[0], s.shape[1], dtype=torch.bool, device=device)
        if is_causal:
            near = near & (s <= t)
        if window is not None:
            near = near & ((t - s).abs() <= window)
        near = near[None, None, None]  # (1, 1, 1, Br, Bc)
        allowed = near if allowed is None else allowed & near
    return allowed


def key_blocks(
    i_start: int, i_stop: int, s: int, block_k: int, is_causal: bool, window: int | None
) -> tuple[int, int]:
    """``(first, stop)`` key-block indices that query rows [i_start, i_stop) need: causal
    skips keys > i_stop - 1; a window skips keys outside [i_start - window, i_stop - 1 + window]."""
    lo, hi = 0, s
    if is_causal:
        hi = min(hi, i_stop)
    if window is not None:
        lo, hi = max(lo, i_start - window), min(hi, i_stop + window)
    return lo // block_k, -(-hi // block_k) if hi > lo else lo // block_k


def query_blocks(
    j_start: int, j_stop: int, t: int, block_q: int, is_causal: bool, window: int | None
) -> tuple[int, int]:
    """``(first, stop)`` query-block indices that see keys [j_start, j_stop): causal skips
    rows < j_start; a window skips rows outside [j_start - window, j_stop - 1 + window]."""
    lo, hi = 0, t
    if is_causal:
        lo = max(lo, j_start)
    if window is not None:
        lo, hi = max(lo, j_start - window), min(hi, j_stop + window)
    return lo // block_q, -(-hi // block_q) if hi > lo else lo // block_q


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
    scale = 1.0 / math.sqrt(hd)
    qg, kg, vg = grouped(q, g), k[:, :, None], v[:, :, None]  # (B, G, H/G | 1, T | S, hd)
    mask = grouped_mask(mask, g)
    out = torch.empty(qg.shape, dtype=acc, device=q.device)
    lse = torch.empty(qg.shape[:-1], dtype=acc, device=q.device)
    for i in range(0, t, block_q):  # step 1-2
        rows = slice(i, min(i + block_q, t))
        q_i = qg[..., rows, :].to(acc) * scale  # (B, G, H/G, Br, hd)
        m_i = torch.full(q_i.shape[:-1], -math.inf, dtype=acc, device=q.device)  # (B, G, H/G, Br)
        l_i = torch.zeros_like(m_i)
        o_i = torch.zeros_like(q_i)
        first, stop = key_blocks(rows.start, rows.stop, s, block_k, is_causal, window)
        for j in range(first * block_k, stop * block_k, block_k):  # step 3
            cols = slice(j, min(j + block_k, s))
            s_ij = q_i @ kg[..., cols, :].to(acc).transpose(-2, -1)  # step 4: (B, G, H/G, Br, Bc)
            allowed = block_mask(mask, key_padding_mask, is_causal, window, rows, cols, q.device)
            if allowed is not None:
                s_ij = s_ij.masked_fill(~allowed, -math.inf)
            m_new = torch.maximum(m_i, s_ij.amax(dim=-1))  # step 5
            m_safe = torch.where(torch.isfinite(m_new), m_new, 0.0)  # rows with no key yet
            p_ij = torch.exp(s_ij - m_safe[..., None])
            alpha = torch.exp(m_i - m_safe)  # step 6: rescale what came before
            l_i = alpha * l_i + p_ij.sum(dim=-1)
            o_i = alpha[..., None] * o_i + p_ij @ vg[..., cols, :].to(acc)
            m_i = m_new
        has_key = l_i > 0  # step 7
        l_safe = torch.where(has_key, l_i, 1.0)
        out[..., rows, :] = torch.where(has_key[..., None], o_i / l_safe[..., None], 0.0)
        lse[..., rows] = torch.where(has_key, m_i + torch.log(l_safe), math.inf)
    return out.reshape(b, h, t, hd).to(v.dtype), lse.reshape(b, h, t)


@torch.compiler.disable  # the backward runs eagerly too, even when a compiled step calls it
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
    t, hd = q.shape[2], q.shape[3]
    g, s = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(hd)
    qg, lse = grouped(q, g), grouped(lse, g)  # (B, G, H/G, T, hd), (B, G, H/G, T)
    d_out = grouped(d_out, g).to(acc)
    delta = (d_out * grouped(out, g).to(acc)).sum(dim=-1)  # step 1: (B, G, H/G, T)
    mask = grouped_mask(mask, g)
    dq = torch.zeros(qg.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    for j in range(0, s, block_k):  # step 2
        cols = slice(j, min(j + block_k, s))
        k_j, v_j = k[:, :, None, cols].to(acc), v[:, :, None, cols].to(acc)  # (B, G, 1, Bc, hd)
        first, stop = query_blocks(cols.start, cols.stop, t, block_q, is_causal, window)
        for i in range(first * block_q, stop * block_q, block_q):  # step 3
            rows = slice(i, min(i + block_q, t))
            q_i = qg[..., rows, :].to(acc)  # (B, G, H/G, Br, hd)
            s_ij = (q_i * scale) @ k_j.transpose(-2, -1)  # step 4: (B, G, H/G, Br, Bc)
            p_ij = torch.exp(s_ij - lse[..., rows, None])
            allowed = block_mask(mask, key_padding_mask, is_causal, window, rows, cols, q.device)
            if allowed is not None:
                p_ij = p_ij.masked_fill(~allowed, 0.0)
            do_i = d_out[..., rows, :]  # (B, G, H/G, Br, hd)
            dv[:, :, cols] += (p_ij.transpose(-2, -1) @ do_i).sum(dim=2)  # step 5
            dp_ij = do_i @ v_j.transpose(-2, -1)  # (B, G, H/G, Br, Bc)
            ds_ij = p_ij * (dp_ij - delta[..., rows, None])  # step 6
            dq[..., rows, :] += (ds_ij @ k_j) * scale  # step 7
            dk[:, :, cols] += (ds_ij.transpose(-2, -1) @ q_i).sum(dim=2) * scale
    return dq.reshape(q.shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _FlashAttention(torch.autograd.Function):
    """Saves Q, K, V, O and L (all linear in T); the backward recomputes the weights."""

    @staticmethod
    def forward(ctx, q, k, v, mask, key_padding_mask, is_causal, window, block_q, block_k):
        out, lse = flash_forward(
            q, k, v, mask, key_padding_mask, is_causal, block_q, block_k, window=window
        )
        ctx.save_for_backward(q, k, v, out, lse, mask, key_padding_mask)
        ctx.options = (is_causal, block_q, block_k)
        ctx.window = window
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse, mask, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = flash_backward(
            q, k, v, out, lse, d_out, mask, key_padding_mask, *ctx.options, window=ctx.window
        )
        return dq, dk, dv, None, None, None, None, None, None
