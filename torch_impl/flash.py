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
s <= t; key blocks entirely above the diagonal are skipped, not computed); ``mask`` a
general boolean (B|1, H|1, T|1, S) mask, True = may attend. All three combine. A query row
with no allowed key gets a zero output and zero gradients, as the math path does. Keys no
query may attend to are never read (:func:`hide_masked_keys`, which every backend calls). Scores
and sums run in float32 (float64 for float64 inputs); the output has the inputs' dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BLOCK_K", "BLOCK_Q", "flash_attention", "hide_masked_keys"]

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
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(hd)) V by blocks; q (B, H, T, hd), k, v (B, H, S, hd) -> (B, H, T, hd).

    Args:
        mask: optional boolean (B|1, H|1, T|1, S), True = may attend.
        key_padding_mask: optional boolean (B, S), True = real key.
        is_causal: query t attends to keys s <= t only.
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
    k, v = hide_masked_keys(k, v, mask, key_padding_mask, is_causal=is_causal, q_len=q.shape[2])
    return _FlashAttention.apply(q, k, v, mask, key_padding_mask, is_causal, block_q, block_k)


def hide_masked_keys(
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v (B, H, S, hd) with the rows of keys that no query may attend to set to zero.

    Every backend calls this first, so that a masked key's K and V are never read: a NaN or
    Inf there (padding's embeddings, a garbage cache row) cannot reach any output or
    gradient, whatever a kernel does with a masked score (0 * NaN is NaN; -inf + NaN is
    NaN). A key is visible when some query t < ``q_len`` may attend to it under ``mask``
    (B|1, H|1, T|1, S), ``key_padding_mask`` (B, S) and causality (s <= t) together. Keys
    some queries see are left as they are: a non-finite value there is the caller's.
    """
    s = k.shape[2]
    visible = None  # (B|1, H|1, S), or None: every key is visible
    if mask is not None:
        if is_causal and mask.shape[-2] > 1:  # already (.., T, S): the causal and is no larger
            causal = torch.ones(q_len, s, dtype=torch.bool, device=k.device).tril()[None, None]
            visible = (mask & causal).any(dim=-2)
        else:
            visible = mask.any(dim=-2)
    if is_causal and (mask is None or mask.shape[-2] == 1):
        reach = torch.arange(s, device=k.device) < q_len  # (S,): some query t >= s exists
        visible = reach[None, None] if visible is None else visible & reach
    if key_padding_mask is not None:
        real = key_padding_mask.bool()[:, None, :]  # (B, 1, S)
        visible = real if visible is None else visible & real
    if visible is None:
        return k, v
    hidden = ~visible[..., None]  # (B|1, H|1, S, 1)
    return k.masked_fill(hidden, 0.0), v.masked_fill(hidden, 0.0)


def accumulator_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (bfloat16 accumulates in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def block_mask(
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    is_causal: bool,
    rows: slice,
    cols: slice,
    device: torch.device,
) -> torch.Tensor | None:
    """The allowed (B|1, H|1, Br, Bc) entries of block (rows, cols), or None if all are."""
    allowed = None
    if mask is not None:
        allowed = mask[..., rows if mask.shape[-2] > 1 else slice(None), cols]
    if key_padding_mask is not None:
        padding = key_padding_mask[:, None, None, cols]  # (B, 1, 1, Bc)
        allowed = padding if allowed is None else allowed & padding
    if is_causal:
        t = torch.arange(rows.start, rows.stop, device=device)[:, None]  # (Br, 1)
        s = torch.arange(cols.start, cols.stop, device=device)[None, :]  # (1, Bc)
        causal = (s <= t)[None, None]  # (1, 1, Br, Bc)
        allowed = causal if allowed is None else allowed & causal
    return allowed


def key_blocks(i: int, n_k: int, block_q: int, block_k: int, is_causal: bool) -> int:
    """How many key blocks query block i needs: causal skips keys >= its last query + 1."""
    if not is_causal:
        return n_k
    return min(n_k, ((i + 1) * block_q + block_k - 1) // block_k)


def query_blocks(j: int, block_q: int, block_k: int, is_causal: bool) -> int:
    """The first query block that sees key block j: causal skips rows t < j's first key."""
    return (j * block_k) // block_q if is_causal else 0


def flash_forward(q, k, v, mask, key_padding_mask, is_causal, block_q, block_k):
    """Algorithm 1. Returns ``(O (B, H, T, hd) in v's dtype, L (B, H, T) log-sum-exp)``.

    1. Split Q into blocks Q_i of Br rows, K and V into blocks K_j, V_j of Bc rows.
    2. For each Q_i: m_i = -inf, l_i = 0, O_i = 0 (in the accumulator dtype).
    3.   For each K_j, V_j (causal: only j with keys <= the block's last query):
    4.     S_ij = Q_i K_j^T / sqrt(hd), masked entries -inf.
    5.     m_new = max(m_i, rowmax(S_ij)); P_ij = exp(S_ij - m_new).
    6.     l_i = exp(m_i - m_new) l_i + rowsum(P_ij); O_i = exp(m_i - m_new) O_i + P_ij V_j.
    7.   O_i = O_i / l_i (0 where l_i = 0: no allowed key); L_i = m_i + log(l_i) (+inf there).
    """
    acc = accumulator_dtype(q)
    b, h, t, hd = q.shape
    s = k.shape[2]
    n_q, n_k = -(-t // block_q), -(-s // block_k)
    scale = 1.0 / math.sqrt(hd)
    out = torch.empty(b, h, t, hd, dtype=acc, device=q.device)
    lse = torch.empty(b, h, t, dtype=acc, device=q.device)
    for i in range(n_q):  # step 1-2
        rows = slice(i * block_q, min((i + 1) * block_q, t))
        q_i = q[:, :, rows].to(acc) * scale  # (B, H, Br, hd)
        m_i = torch.full(q_i.shape[:-1], -math.inf, dtype=acc, device=q.device)  # (B, H, Br)
        l_i = torch.zeros_like(m_i)
        o_i = torch.zeros_like(q_i)
        for j in range(key_blocks(i, n_k, block_q, block_k, is_causal)):  # step 3
            cols = slice(j * block_k, min((j + 1) * block_k, s))
            s_ij = q_i @ k[:, :, cols].to(acc).transpose(-2, -1)  # step 4: (B, H, Br, Bc)
            allowed = block_mask(mask, key_padding_mask, is_causal, rows, cols, q.device)
            if allowed is not None:
                s_ij = s_ij.masked_fill(~allowed, -math.inf)
            m_new = torch.maximum(m_i, s_ij.amax(dim=-1))  # step 5
            m_safe = torch.where(torch.isfinite(m_new), m_new, 0.0)  # rows with no key yet
            p_ij = torch.exp(s_ij - m_safe[..., None])
            alpha = torch.exp(m_i - m_safe)  # step 6: rescale what came before
            l_i = alpha * l_i + p_ij.sum(dim=-1)
            o_i = alpha[..., None] * o_i + p_ij @ v[:, :, cols].to(acc)
            m_i = m_new
        has_key = l_i > 0  # step 7
        l_safe = torch.where(has_key, l_i, 1.0)
        out[:, :, rows] = torch.where(has_key[..., None], o_i / l_safe[..., None], 0.0)
        lse[:, :, rows] = torch.where(has_key, m_i + torch.log(l_safe), math.inf)
    return out.to(v.dtype), lse


@torch.compiler.disable  # the backward runs eagerly too, even when a compiled step calls it
def flash_backward(q, k, v, out, lse, d_out, mask, key_padding_mask, is_causal, block_q, block_k):
    """Algorithm 2. Returns ``(dQ, dK, dV)`` in the inputs' dtypes.

    1. D = rowsum(dO * O) (B, H, T): the softmax backward's per-row term.
    2. For each K_j, V_j: dK_j = 0, dV_j = 0.
    3.   For each Q_i (causal: only blocks with a query >= the block's first key):
    4.     S_ij = Q_i K_j^T / sqrt(hd); P_ij = exp(S_ij - L_i), masked entries 0.
    5.     dV_j += P_ij^T dO_i;  dP_ij = dO_i V_j^T.
    6.     dS_ij = P_ij * (dP_ij - D_i).
    7.     dQ_i += dS_ij K_j / sqrt(hd);  dK_j += dS_ij^T Q_i / sqrt(hd).
    """
    acc = accumulator_dtype(q)
    t, hd = q.shape[2], q.shape[3]
    s = k.shape[2]
    n_q, n_k = -(-t // block_q), -(-s // block_k)
    scale = 1.0 / math.sqrt(hd)
    d_out = d_out.to(acc)
    delta = (d_out * out.to(acc)).sum(dim=-1)  # step 1: (B, H, T)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    for j in range(n_k):  # step 2
        cols = slice(j * block_k, min((j + 1) * block_k, s))
        k_j, v_j = k[:, :, cols].to(acc), v[:, :, cols].to(acc)  # (B, H, Bc, hd)
        for i in range(query_blocks(j, block_q, block_k, is_causal), n_q):  # step 3
            rows = slice(i * block_q, min((i + 1) * block_q, t))
            q_i = q[:, :, rows].to(acc)  # (B, H, Br, hd)
            s_ij = (q_i * scale) @ k_j.transpose(-2, -1)  # step 4: (B, H, Br, Bc)
            p_ij = torch.exp(s_ij - lse[:, :, rows, None])
            allowed = block_mask(mask, key_padding_mask, is_causal, rows, cols, q.device)
            if allowed is not None:
                p_ij = p_ij.masked_fill(~allowed, 0.0)
            do_i = d_out[:, :, rows]  # (B, H, Br, hd)
            dv[:, :, cols] += p_ij.transpose(-2, -1) @ do_i  # step 5
            dp_ij = do_i @ v_j.transpose(-2, -1)  # (B, H, Br, Bc)
            ds_ij = p_ij * (dp_ij - delta[:, :, rows, None])  # step 6
            dq[:, :, rows] += (ds_ij @ k_j) * scale  # step 7
            dk[:, :, cols] += (ds_ij.transpose(-2, -1) @ q_i) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _FlashAttention(torch.autograd.Function):
    """Saves Q, K, V, O and L (all linear in T); the backward recomputes the weights."""

    @staticmethod
    def forward(ctx, q, k, v, mask, key_padding_mask, is_causal, block_q, block_k):
        out, lse = flash_forward(q, k, v, mask, key_padding_mask, is_causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse, mask, key_padding_mask)
        ctx.options = (is_causal, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse, mask, key_padding_mask = ctx.saved_tensors
        is_causal, block_q, block_k = ctx.options
        dq, dk, dv = flash_backward(
            q, k, v, out, lse, d_out, mask, key_padding_mask, is_causal, block_q, block_k
        )
        return dq, dk, dv, None, None, None, None, None
