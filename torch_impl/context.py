"""Context parallelism in PyTorch: attention over a sequence split across a "seq" group.

Mirrors ``jax_impl/context.py``. Each rank of the group holds the rows of some positions of
the sequence (``shared.parallel.seq_positions``: contiguous shards, or the load-balanced
order for causal attention) for its queries, keys and values. Its queries need every key,
so attention runs one of two ways:

* :func:`all_gather_attention`: gather every rank's K and V (with their padding mask and
  positions), then the flash kernel on the local queries against the whole sequence. One
  collective per tensor forward; the backward all-reduces dK and dV and keeps its own rows
  (gloo has no reduce-scatter). Memory: the whole K and V on every rank.
* :func:`ring_attention`: the W ranks form a ring. At each of W steps a rank attends its
  queries to the K, V block it holds, with ``torch_impl.flash.flash_forward``, and merges the
  partial result into its running one by the online softmax (float32); meanwhile the block
  moves to the next rank (``dist.batch_isend_irecv``). The backward passes the blocks around
  again, with dK and dV accumulators travelling beside them, and ``flash_backward`` per block
  (Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite Context", 2023).
  Memory: two K, V blocks per rank.

Each K, V block travels with its keys' padding mask and global positions, so padding,
causality and a sliding window (masks built from global positions) are exact whichever
rank a block came from. A rank holds its rows as ``chunks`` contiguous runs of positions (2
in the load-balanced order); the ring computes each (query chunk, key chunk) pair
separately and skips pairs that causality (or the window) masks entirely: that is what load
balancing evens out across ranks (the counts are in :data:`COUNTS`). K and V may have fewer
heads than Q (grouped-query attention): they travel with their own G heads.

:class:`ContextParallel` is what ``torch_impl.parallel.parallelize`` gives a model's
attention layers on a "seq" axis > 1.

Counts: every collective step this process issues adds to :data:`COUNTS` (``"ring_step"``:
one ``batch_isend_irecv``; ``"all_gather"``, ``"all_reduce"``: one call), its payload to
``"bytes"`` (what a ring step sends; the whole gathered or reduced tensor of an all-gather
or all-reduce, as ``shared.parallel.context_bytes`` counts them), and every score entry
computed to ``"scores"``.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import torch
import torch.distributed as dist

from shared import parallel as plan
from torch_impl import flash
from torch_impl.flash import (
    accumulator_dtype,
    check_window,
    flash_attention,
    flash_backward,
    flash_forward,
    hide_masked_keys,
)

__all__ = [
    "COUNTS",
    "ContextParallel",
    "all_gather_attention",
    "context_attention",
    "merge_partial",
    "ring_attention",
    "slice_sequence",
]

COUNTS: collections.Counter = collections.Counter()

METHODS = ("ring", "all_gather")


@dataclasses.dataclass(frozen=True)
class ContextParallel:
    """How an encoder's attention runs over a "seq" process ``group``: ``method`` ("ring" or
    "all_gather") and ``load_balance`` (the zig-zag order of ``shared.parallel.seq_positions``,
    for causal attention). ``torch_impl.parallel.parallelize`` gives one to every
    ``MultiHeadAttention`` of a model on a mesh whose "seq" is > 1, and to the model (for
    its positions).

    PyTorch ranks hold their own rows (:func:`slice_sequence`): the model's default
    positions are each row's global one (:meth:`position_ids`), and attention runs
    :func:`context_attention` on them.
    """

    group: object
    method: str = "ring"
    load_balance: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def positions(self, t: int, device=None) -> torch.Tensor:
        """(t,) int64: the global positions of this rank's t rows of a T = t W sequence."""
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        positions = plan.seq_positions(t * world, world, rank, load_balance=self.load_balance)
        return torch.as_tensor(positions, device=device)

    def position_ids(self, cfg, input_ids) -> torch.Tensor:
        """(1, T/W) int64 on the CPU, the model's default positions of this rank's rows of
        ``input_ids`` (B, T/W): each row's global position. ValueError for RoBERTa's positions
        (``position_pad_id``): they count the real tokens of the whole sequence, so the
        call must pass them (``position_ids``, sliced as the inputs)."""
        if cfg.position_pad_id is not None:
            raise ValueError(
                f"position_pad_id={cfg.position_pad_id} counts positions over the whole "
                "sequence: under context parallelism pass position_ids (this rank's rows of "
                "the whole sequence's), expected position_ids, got None"
            )
        return self.positions(input_ids.shape[1])[None]

    def attend(self, q, k, v, mask=None, *, key_padding_mask=None, is_causal=False, window=None):
        """q (B, H, T/W, hd), k, v (B, G, T/W, hd) this rank's rows -> (B, H, T/W, hd), as an
        attention backend is called. A general ``mask`` is refused (ValueError): the ranks
        build their masks from global positions, padding, causality and the window only."""
        if mask is not None:
            raise ValueError(
                "context parallelism takes padding, causality and a window, not a general "
                f"mask: expected mask=None, got a mask of shape {tuple(mask.shape)}"
            )
        return context_attention(
            q,
            k,
            v,
            positions=self.positions(q.shape[2], q.device),
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            window=window,
            method=self.method,
            chunks=2 if self.load_balance else 1,
            group=self.group,
        )


def slice_sequence(x: torch.Tensor, group=None, *, dim: int, load_balance: bool = False):
    """This rank's rows of a whole sequence ``x`` along ``dim``, and their global positions.

    Returns ``(x's rows (.., T/W, ..), positions (T/W,) int64)``, W the size of ``group``
    (the default group if None); the rows are those of ``shared.parallel.seq_positions``.
    Raises ``ValueError`` if T does not divide into W shards (2W chunks with load balancing).
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    positions = plan.seq_positions(x.shape[dim], world, rank, load_balance=load_balance)
    positions = torch.as_tensor(positions, device=x.device)
    return x.index_select(dim, positions), positions


def context_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    positions: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
    method: str = "ring",
    chunks: int = 1,
    group=None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Attention of this rank's queries to the whole sequence: q (B, H, T/W, hd), k, v
    (B, G, T/W, hd) this rank's rows -> (B, H, T/W, hd); G K/V heads dividing H
    (grouped-query attention: K and V travel with G heads, not H).

    Args:
        positions: (T/W,) int64, the global position of each local row (:func:`slice_sequence`).
        key_padding_mask: optional (B, T/W) boolean, True = real key, for the local rows.
        is_causal: query at position t attends to keys at positions s <= t only.
        window: optional int >= 1: query at position t attends to keys at positions
            |t - s| <= window only (sliding window; global positions, as causality).
        method: "ring" (:func:`ring_attention`) or "all_gather" (:func:`all_gather_attention`).
        chunks: the local rows are this many contiguous runs of positions (2 in the
            load-balanced order); the ring skips (query, key) chunk pairs causality masks.
        group: the "seq" process group (``mesh["seq"].get_group()``); None = the default group.
        block_q, block_k: the flash kernel's block sizes.

    Raises ``ValueError`` for an unknown method or shapes that do not fit together.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    attend = ring_attention if method == "ring" else all_gather_attention
    return attend(
        q,
        k,
        v,
        positions=positions,
        key_padding_mask=key_padding_mask,
        is_causal=is_causal,
        window=window,
        chunks=chunks,
        group=group,
        block_q=block_q,
        block_k=block_k,
    )


def _arguments(q, k, v, positions, key_padding_mask, chunks, window, block_q, block_k):
    """Both algorithms' argument handling, in one place: ValueError on shapes, chunks, window
    or block sizes; returns ``(real, block_q, block_k)``: the local padding mask as (B, T/W)
    booleans (all True if None) and the block sizes (the flash kernel's by default)."""
    b, h, t, hd = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (t, hd) or h % k.shape[1]:
        raise ValueError(
            f"q (B, H, T, hd) and k, v (B, G, T, hd) with G dividing H expected, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if tuple(positions.shape) != (t,):
        raise ValueError(f"positions must have shape ({t},), got {tuple(positions.shape)}")
    if chunks < 1 or t % chunks != 0:
        raise ValueError(f"the {t} local rows must divide into chunks={chunks} runs")
    if window is not None:
        check_window(window)
    block_q = flash.BLOCK_Q if block_q is None else block_q
    block_k = flash.BLOCK_K if block_k is None else block_k
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    if key_padding_mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=q.device), block_q, block_k
    if tuple(key_padding_mask.shape) != (b, t):
        raise ValueError(
            f"key_padding_mask must have shape ({b}, {t}), got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask.bool(), block_q, block_k


def position_mask(q_positions, k_positions, is_causal: bool, window: int | None):
    """(1, 1, Tq, Tk) booleans from global positions: key position <= query position if
    ``is_causal``, and |query - key| <= ``window`` with a window; None if neither."""
    if not is_causal and window is None:
        return None
    t, s = q_positions[:, None], k_positions[None, :]
    allowed = (s <= t) | (not is_causal)  # (Tq, Tk)
    if window is not None:
        allowed = allowed & ((t - s).abs() <= window)
    return allowed[None, None]


def merge_partial(o_a, lse_a, o_b, lse_b):
    """Two partial attentions of the same queries over disjoint sets of keys, merged into the
    attention over their union (the online softmax's rescaling, done once per block).

    o (B, H, T, hd) each normalized over its own keys; lse (B, H, T) the log-sum-exp of its
    scores, -inf for a row with no key. Returns ``(o, lse)`` of the union, o = 0 where no key.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)
    w_a, w_b = torch.exp(lse_a - safe), torch.exp(lse_b - safe)  # 0 for a side with no key
    return w_a[..., None] * o_a + w_b[..., None] * o_b, lse


def _pairs(q_pos, k_pos, chunks: int, is_causal: bool, window: int | None):
    """The (query chunk, key chunk) row slices to compute: causal skips a pair whose first key
    comes after its last query, a window one whose keys are all farther than ``window`` from
    all its queries."""
    n = q_pos.shape[0] // chunks
    runs = [slice(c * n, (c + 1) * n) for c in range(chunks)]
    for qs in runs:
        for ks in runs:
            k_lo, k_hi = int(k_pos[ks].min()), int(k_pos[ks].max())
            q_lo, q_hi = int(q_pos[qs].min()), int(q_pos[qs].max())
            visible = True
            if is_causal:
                visible = k_lo <= q_hi
            if window is not None:
                visible = visible and k_lo <= q_hi + window and k_hi >= q_lo - window
            if visible:
                yield qs, ks


def _ring_step(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send ``tensors`` to the next rank of the ring and receive the previous rank's: one
    ``batch_isend_irecv`` (blocking until both are done)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    group = group if group is not None else dist.group.WORLD
    after = dist.get_global_rank(group, (rank + 1) % world)
    before = dist.get_global_rank(group, (rank - 1) % world)
    # empty_like keeps a transposed view's strides; the receive buffers must be contiguous
    received = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), after, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, before, group) for r in received]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    COUNTS["ring_step"] += 1
    COUNTS["bytes"] += sum(t.nelement() * t.element_size() for t in tensors)
    return received


def ring_forward(q, k, v, real, positions, is_causal, window, chunks, group, block_q, block_k):
    """The ring's forward. Returns ``(O (B, H, T/W, hd), L (B, H, T/W))`` in float32 (float64
    for float64 inputs), L = +inf for a query with no key, as ``flash_forward``'s.

    1. o = 0, lse = -inf; the block (K, V, real keys, positions) is this rank's own.
    2. W times: attend to the block by chunk pairs (flash_forward), merge_partial into
       (o, lse); pass the block to the next rank, take the previous rank's (not after the last).
    """
    acc = accumulator_dtype(q)
    world = dist.get_world_size(group)
    q = q.to(acc)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)  # step 1
    lse = torch.full(q.shape[:-1], -math.inf, dtype=acc, device=q.device)
    block = [k.to(acc), v.to(acc), real.to(torch.uint8), positions]
    for step in range(world):  # step 2
        k_j, v_j, real_j, pos_j = block
        for qs, ks in _pairs(positions, pos_j, chunks, is_causal, window):
            mask = position_mask(positions[qs], pos_j[ks], is_causal, window)
            o_ij, lse_ij = flash_forward(
                q[:, :, qs], k_j[:, :, ks], v_j[:, :, ks], mask, real_j[:, ks].bool(),
                False, block_q, block_k,
            )  # fmt: skip
            lse_ij = torch.where(torch.isinf(lse_ij), -math.inf, lse_ij)  # no key: weight 0
            out[:, :, qs], lse[:, :, qs] = merge_partial(out[:, :, qs], lse[:, :, qs], o_ij, lse_ij)
            COUNTS["scores"] += (qs.stop - qs.start) * (ks.stop - ks.start)
        if step < world - 1:
            block = _ring_step(block, group)
    return out, torch.where(torch.isfinite(lse), lse, math.inf)


def ring_backward(
    q, k, v, out, lse, d_out, real, positions, is_causal, window, chunks, group, bq, bk
):
    """The ring's backward. Returns ``(dQ, dK, dV)`` of this rank's rows, in float32 (float64).

    1. dQ = 0; the block (K, V, real keys, positions) is this rank's own, with dK = dV = 0.
    2. W times: flash_backward of the local queries against the block, by chunk pairs, with
       the merged O and L (so P is the whole sequence's softmax); add to dQ and to the
       block's dK, dV; pass the block and its dK, dV to the next rank (K and V not after the
       last step). After W passes the accumulators of this rank's own block are back here.
    """
    acc = accumulator_dtype(q)
    world = dist.get_world_size(group)
    q, out, d_out = q.to(acc), out.to(acc), d_out.to(acc)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)  # step 1
    block = [k.to(acc), v.to(acc), real.to(torch.uint8), positions]
    grads = [torch.zeros(k.shape, dtype=acc, device=q.device) for _ in range(2)]
    for step in range(world):  # step 2
        k_j, v_j, real_j, pos_j = block
        dk_j, dv_j = grads
        for qs, ks in _pairs(positions, pos_j, chunks, is_causal, window):
            mask = position_mask(positions[qs], pos_j[ks], is_causal, window)
            dq_ij, dk_ij, dv_ij = flash_backward(
                q[:, :, qs], k_j[:, :, ks], v_j[:, :, ks], out[:, :, qs], lse[:, :, qs],
                d_out[:, :, qs], mask, real_j[:, ks].bool(), False, bq, bk,
            )  # fmt: skip
            dq[:, :, qs] += dq_ij
            dk_j[:, :, ks] += dk_ij
            dv_j[:, :, ks] += dv_ij
        if step < world - 1:
            *block, dk_j, dv_j = _ring_step([*block, dk_j, dv_j], group)
        else:
            dk_j, dv_j = _ring_step([dk_j, dv_j], group)
        grads = [dk_j, dv_j]
    return dq, grads[0], grads[1]


class _RingAttention(torch.autograd.Function):
    """Saves Q, K, V, O and L of this rank's rows; the backward runs the ring again."""

    @staticmethod
    def forward(ctx, q, k, v, real, positions, is_causal, window, chunks, group, block_q, block_k):
        out, lse = ring_forward(
            q, k, v, real, positions, is_causal, window, chunks, group, block_q, block_k
        )
        ctx.save_for_backward(q, k, v, out, lse, real, positions)
        ctx.options = (is_causal, window, chunks, group, block_q, block_k)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse, real, positions = ctx.saved_tensors
        is_causal, window, chunks, group, block_q, block_k = ctx.options
        dq, dk, dv = ring_backward(
            q,
            k,
            v,
            out,
            lse,
            d_out,
            real,
            positions,
            is_causal,
            window,
            chunks,
            group,
            block_q,
            block_k,
        )
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *(None,) * 8


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    positions: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
    chunks: int = 1,
    group=None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """Ring attention over ``group``; arguments and shapes as :func:`context_attention`.

    Forward: W - 1 ring steps (K, V, padding mask, positions); backward: W steps (the same,
    then dK and dV home). Padded keys are zeroed first (``hide_masked_keys``).
    """
    real, block_q, block_k = _arguments(
        q, k, v, positions, key_padding_mask, chunks, window, block_q, block_k
    )
    k, v = hide_masked_keys(k, v, None, real, is_causal=False, q_len=q.shape[2])
    return _RingAttention.apply(
        q, k, v, real, positions, is_causal, window, chunks, group, block_q, block_k
    )


class _AllGatherSequence(torch.autograd.Function):
    """Every rank's rows of x along ``dim``, rank order; the backward all-reduces the whole
    gradient and keeps this rank's rows (gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.options = (dim, group, x.shape[dim])
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        dim, group, rows = ctx.options
        grad = grad.contiguous()
        dist.all_reduce(grad, group=group)
        COUNTS["all_reduce"] += 1
        COUNTS["bytes"] += grad.nelement() * grad.element_size()
        rank = dist.get_rank(group)
        return grad.narrow(dim, rank * rows, rows), None, None


def _all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [
        torch.empty_like(x, memory_format=torch.contiguous_format)
        for _ in range(dist.get_world_size(group))
    ]
    dist.all_gather(parts, x.contiguous(), group=group)
    COUNTS["all_gather"] += 1
    COUNTS["bytes"] += len(parts) * x.nelement() * x.element_size()  # the gathered whole
    return torch.cat(parts, dim=dim)


def all_gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    positions: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
    chunks: int = 1,
    group=None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> torch.Tensor:
    """All-gather attention over ``group``; arguments and shapes as :func:`context_attention`
    (``chunks`` is checked, not used: every local query meets the whole sequence).

    Forward: 4 all-gathers (K, V, padding mask, positions); backward: 2 all-reduces (dK, dV).
    """
    real, block_q, block_k = _arguments(
        q, k, v, positions, key_padding_mask, chunks, window, block_q, block_k
    )
    k_all = _AllGatherSequence.apply(k, 2, group)  # (B, G, T, hd)
    v_all = _AllGatherSequence.apply(v, 2, group)
    real_all = _all_gather(real.to(torch.uint8), 1, group).bool()  # (B, T)
    pos_all = _all_gather(positions, 0, group)  # (T,)
    mask = position_mask(positions, pos_all, is_causal, window)
    return flash_attention(
        q, k_all, v_all, mask, key_padding_mask=real_all, block_q=block_q, block_k=block_k
    )
