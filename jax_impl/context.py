"""Context parallelism in JAX: attention over a sequence split across a mesh's "seq" axis.

Mirrors ``torch_impl/context.py``. Each device along "seq" holds the rows of some positions
of the sequence (``shared.parallel.seq_positions``: contiguous shards, or the load-balanced
order for causal attention) for its queries, keys and values. Its queries need every key,
so attention runs one of two ways, inside ``jax.shard_map``:

* :func:`all_gather_attention`: gather every device's K and V (with their padding mask and
  positions) by ``lax.all_gather``, then the flash kernel on the local queries against the
  whole sequence. Autodiff turns the gathers of K and V into reduce-scatters of dK and dV.
  Memory: the whole K and V on every device.
* :func:`ring_attention`: the W devices form a ring. At each of W steps a device attends its
  queries to the K, V block it holds, with ``jax_impl.flash.flash_forward``, and merges the
  partial result into its running one by the online softmax (float32); the block moves to
  the next device by ``lax.ppermute``. The backward (a ``jax.custom_vjp``) passes the blocks
  around again, with dK and dV accumulators travelling beside them, and ``flash_backward``
  per block (Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite
  Context", 2023). Memory: two K, V blocks per device.

Each K, V block travels with its keys' padding mask and global positions, so padding,
causality and a sliding window (masks built from global positions) are exact whichever
device a block came from. A device holds its rows as ``chunks`` contiguous runs of
positions (2 in the load-balanced order); the ring computes each (query chunk, key chunk)
pair separately and skips (``lax.cond``) pairs that causality (or the window) masks
entirely: that is what load balancing evens out across devices. K and V may have fewer
heads than Q (grouped-query attention): they travel with their own G heads.

:class:`ContextParallel` is what ``jax_impl.parallel.parallelize`` gives a model's
attention layers on a "seq" axis > 1.

:func:`shard_attention` is the JAX idiom around them: global arrays in, ``jax.shard_map``
over the mesh ("data" on the batch, "model" on the heads, "seq" on the sequence), global
arrays out. PyTorch's ranks hold their own rows instead (``torch_impl.context.slice_sequence``).
Collective steps are counted from the program: ``ppermute`` and ``all_gather`` equations
in its jaxpr (:func:`count_collectives`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jax_impl import flash
from jax_impl.flash import (
    accumulator_dtype,
    check_window,
    flash_attention,
    flash_backward,
    flash_forward,
    hide_masked_keys,
)
from shared import parallel as plan

__all__ = [
    "ContextParallel",
    "all_gather_attention",
    "context_attention",
    "count_collectives",
    "merge_partial",
    "ring_attention",
    "shard_attention",
]

METHODS = ("ring", "all_gather")


@dataclasses.dataclass(frozen=True)
class ContextParallel:
    """How an encoder's attention runs over ``mesh``'s "seq" axis: ``method`` ("ring" or
    "all_gather") and ``load_balance`` (the zig-zag order of ``shared.parallel.seq_positions``,
    for causal attention). ``jax_impl.parallel.parallelize`` gives one to every
    ``MultiHeadAttention`` of a model on a mesh whose "seq" is > 1.

    JAX sees global arrays: positions, padding and the rest of the layer are the one-device
    ones, and only attention runs per device, under :func:`shard_attention`.
    """

    mesh: Mesh
    method: str = "ring"
    load_balance: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def attend(self, q, k, v, mask=None, *, key_padding_mask=None, is_causal=False, window=None):
        """q (B, H, T, hd), k, v (B, G, T, hd) whole -> (B, H, T, hd), as an attention
        backend is called. A general ``mask`` is refused (ValueError): the ranks build their
        masks from global positions, padding, causality and the window only."""
        if mask is not None:
            raise ValueError(
                "context parallelism takes padding, causality and a window, not a general "
                f"mask: expected mask=None, got a mask of shape {tuple(mask.shape)}"
            )
        return shard_attention(
            q,
            k,
            v,
            self.mesh,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            window=window,
            method=self.method,
            load_balance=self.load_balance,
        )


def shard_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mesh: Mesh,
    *,
    key_padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    method: str = "ring",
    load_balance: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Attention over ``mesh``'s "seq" axis: q (B, H, T, hd), k, v (B, G, T, hd) whole ->
    (B, H, T, hd); G K/V heads dividing H (grouped-query attention).

    The sequence is put in the order of ``shared.parallel.seq_order`` (load-balanced if
    ``load_balance``), split over "seq" (the batch over "data", the heads over "model"),
    attended by :func:`context_attention` under ``jax.shard_map``, and put back in order.
    ``key_padding_mask`` (B, T) True = real key; ``window``: keys |t - s| <= window only.
    Raises ``ValueError`` when T, B, H or G do not divide over the mesh.
    """
    b, h, t, _ = q.shape
    world = mesh.shape["seq"]
    plan.check_seq_split(t, world, load_balance=load_balance)
    plan.check_batch(b, mesh.shape["data"])
    for what, heads in (("n_heads", h), ("n_kv_heads", k.shape[1])):
        if heads % mesh.shape["model"] != 0:
            raise ValueError(
                f"{what}={heads} is not divisible by the mesh's model={mesh.shape['model']}"
            )
    order = plan.seq_order(t, world, load_balance=load_balance)
    real = jnp.ones((b, t), dtype=bool) if key_padding_mask is None else key_padding_mask
    rows = PartitionSpec("data", "model", "seq", None)
    attend = jax.shard_map(
        functools.partial(
            _attend_shard,
            is_causal=is_causal,
            window=window,
            method=method,
            chunks=2 if load_balance else 1,
            block_q=block_q,
            block_k=block_k,
        ),
        mesh=mesh,
        in_specs=(rows, rows, rows, PartitionSpec("data", "seq"), PartitionSpec("seq")),
        out_specs=rows,
        check_vma=False,  # the flash kernel's loop carries start unvarying; values are per device
    )
    if not load_balance:  # contiguous shards: the sequence is already in the ranks' order
        return attend(q, k, v, real, jnp.asarray(order))
    out = attend(q[:, :, order], k[:, :, order], v[:, :, order], real[:, order], jnp.asarray(order))
    return out[:, :, np.argsort(order)]


def _attend_shard(q, k, v, real, positions, *, is_causal, window, method, chunks, block_q, block_k):
    return context_attention(
        q,
        k,
        v,
        positions=positions,
        key_padding_mask=real,
        is_causal=is_causal,
        window=window,
        method=method,
        chunks=chunks,
        block_q=block_q,
        block_k=block_k,
    )


def context_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    positions: jax.Array,
    key_padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    method: str = "ring",
    chunks: int = 1,
    axis_name: str = "seq",
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Attention of this device's queries to the whole sequence, inside ``jax.shard_map``:
    q (B, H, T/W, hd), k, v (B, G, T/W, hd) this device's rows -> (B, H, T/W, hd); G K/V
    heads dividing H (grouped-query attention: K and V travel with G heads, not H).

    Args:
        positions: (T/W,) integers, the global position of each local row.
        key_padding_mask: optional (B, T/W) boolean, True = real key, for the local rows.
        is_causal: query at position t attends to keys at positions s <= t only.
        window: optional int >= 1: query at position t attends to keys at positions
            |t - s| <= window only (sliding window; global positions, as causality).
        method: "ring" (:func:`ring_attention`) or "all_gather" (:func:`all_gather_attention`).
        chunks: the local rows are this many contiguous runs of positions (2 in the
            load-balanced order); the ring skips (query, key) chunk pairs causality masks.
        axis_name: the mesh axis the sequence is split over.
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
        axis_name=axis_name,
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
        return jnp.ones((b, t), dtype=bool), block_q, block_k
    if tuple(key_padding_mask.shape) != (b, t):
        raise ValueError(
            f"key_padding_mask must have shape ({b}, {t}), got {tuple(key_padding_mask.shape)}"
        )
    return key_padding_mask.astype(bool), block_q, block_k


def position_mask(q_positions, k_positions, is_causal: bool, window: int | None):
    """(1, 1, Tq, Tk) booleans from global positions: key position <= query position if
    ``is_causal``, and |query - key| <= ``window`` with a window; None if neither."""
    if not is_causal and window is None:
        return None
    t, s = q_positions[:, None], k_positions[None, :]
    allowed = (s <= t) | (not is_causal)  # (Tq, Tk)
    if window is not None:
        allowed = allowed & (jnp.abs(t - s) <= window)
    return allowed[None, None]


def merge_partial(o_a, lse_a, o_b, lse_b):
    """Two partial attentions of the same queries over disjoint sets of keys, merged into the
    attention over their union (the online softmax's rescaling, done once per block).

    o (B, H, T, hd) each normalized over its own keys; lse (B, H, T) the log-sum-exp of its
    scores, -inf for a row with no key. Returns ``(o, lse)`` of the union, o = 0 where no key.
    """
    lse = jnp.logaddexp(lse_a, lse_b)
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    w_a, w_b = jnp.exp(lse_a - safe), jnp.exp(lse_b - safe)  # 0 for a side with no key
    return w_a[..., None] * o_a + w_b[..., None] * o_b, lse


def _pairs(q_pos, k_pos, chunks: int, is_causal: bool, window: int | None):
    """The (query chunk, key chunk) row slices, each with whether to compute it (a traced
    boolean; True if neither causal nor windowed): causal skips a pair whose first key comes
    after its last query, a window one whose keys are all farther than ``window`` from all
    its queries."""
    n = q_pos.shape[0] // chunks
    runs = [slice(c * n, (c + 1) * n) for c in range(chunks)]
    for qs in runs:
        for ks in runs:
            k_lo, k_hi, q_lo, q_hi = (
                k_pos[ks].min(),
                k_pos[ks].max(),
                q_pos[qs].min(),
                q_pos[qs].max(),
            )
            visible = True
            if is_causal:
                visible = k_lo <= q_hi
            if window is not None:
                near = (k_lo <= q_hi + window) & (k_hi >= q_lo - window)
                visible = near if visible is True else visible & near
            yield qs, ks, visible


def _ring_step(tensors: list[jax.Array], axis_name: str) -> list[jax.Array]:
    """Send ``tensors`` to the next device of the ring and receive the previous device's: one
    ``lax.ppermute`` of them all."""
    world = lax.axis_size(axis_name)
    ring = [(i, (i + 1) % world) for i in range(world)]
    return list(lax.ppermute(tuple(tensors), axis_name, perm=ring))


def _when(visible, compute, skipped, *operands):
    """``compute(*operands)`` where ``visible`` (a traced boolean, or True), else
    ``skipped(*operands)``: a chunk pair causality masks entirely is not computed."""
    if visible is True:
        return compute(*operands)
    return lax.cond(visible, compute, skipped, *operands)


def _no_keys(q, k, v, mask, real):
    """What ``flash_forward`` gives queries that see none of the keys: O = 0, L = +inf."""
    return jnp.zeros_like(q), jnp.full(q.shape[:-1], jnp.inf, dtype=q.dtype)


def _no_gradients(q, k, v, out, lse, d_out, mask, real):
    """What ``flash_backward`` gives a pair with no allowed entry: zeros."""
    return jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v)


def ring_forward(q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k):
    """The ring's forward. Returns ``(O (B, H, T/W, hd), L (B, H, T/W))`` in float32 (float64
    for float64 inputs), L = +inf for a query with no key, as ``flash_forward``'s.

    1. o = 0, lse = -inf; the block (K, V, real keys, positions) is this device's own.
    2. W times: attend to the block by chunk pairs (flash_forward), merge_partial into
       (o, lse); pass the block to the next device, take the previous device's (not after
       the last).
    """
    acc = accumulator_dtype(q)
    world = lax.axis_size(axis_name)
    q = q.astype(acc)
    out = jnp.zeros(q.shape, dtype=acc)  # step 1
    lse = jnp.full(q.shape[:-1], -jnp.inf, dtype=acc)
    block = [k.astype(acc), v.astype(acc), real, positions]
    for step in range(world):  # step 2
        k_j, v_j, real_j, pos_j = block
        for qs, ks, visible in _pairs(positions, pos_j, chunks, is_causal, window):
            mask = position_mask(positions[qs], pos_j[ks], is_causal, window)
            o_ij, lse_ij = _when(
                visible,
                functools.partial(flash_forward, is_causal=False, block_q=block_q, block_k=block_k),
                _no_keys,
                q[:, :, qs], k_j[:, :, ks], v_j[:, :, ks], mask, real_j[:, ks],
            )  # fmt: skip
            lse_ij = jnp.where(jnp.isinf(lse_ij), -jnp.inf, lse_ij)  # no key: weight 0
            o_i, lse_i = merge_partial(out[:, :, qs], lse[:, :, qs], o_ij, lse_ij)
            out, lse = out.at[:, :, qs].set(o_i), lse.at[:, :, qs].set(lse_i)
        if step < world - 1:
            block = _ring_step(block, axis_name)
    return out, jnp.where(jnp.isfinite(lse), lse, jnp.inf)


def ring_backward(
    q, k, v, out, lse, d_out, real, positions, is_causal, window, chunks, axis_name, bq, bk
):
    """The ring's backward. Returns ``(dQ, dK, dV)`` of this device's rows, in float32 (float64).

    1. dQ = 0; the block (K, V, real keys, positions) is this device's own, with dK = dV = 0.
    2. W times: flash_backward of the local queries against the block, by chunk pairs, with
       the merged O and L (so P is the whole sequence's softmax); add to dQ and to the
       block's dK, dV; pass the block and its dK, dV to the next device (K and V not after
       the last step). After W passes the accumulators of this device's own block are back.
    """
    acc = accumulator_dtype(q)
    world = lax.axis_size(axis_name)
    q, out, d_out = q.astype(acc), out.astype(acc), d_out.astype(acc)
    dq = jnp.zeros(q.shape, dtype=acc)  # step 1
    block = [k.astype(acc), v.astype(acc), real, positions]
    grads = [jnp.zeros(k.shape, dtype=acc) for _ in range(2)]
    for step in range(world):  # step 2
        k_j, v_j, real_j, pos_j = block
        dk_j, dv_j = grads
        for qs, ks, visible in _pairs(positions, pos_j, chunks, is_causal, window):
            mask = position_mask(positions[qs], pos_j[ks], is_causal, window)
            dq_ij, dk_ij, dv_ij = _when(
                visible,
                functools.partial(flash_backward, is_causal=False, block_q=bq, block_k=bk),
                _no_gradients,
                q[:, :, qs], k_j[:, :, ks], v_j[:, :, ks], out[:, :, qs], lse[:, :, qs],
                d_out[:, :, qs], mask, real_j[:, ks],
            )  # fmt: skip
            dq = dq.at[:, :, qs].add(dq_ij)
            dk_j = dk_j.at[:, :, ks].add(dk_ij)
            dv_j = dv_j.at[:, :, ks].add(dv_ij)
        if step < world - 1:
            *block, dk_j, dv_j = _ring_step([*block, dk_j, dv_j], axis_name)
        else:
            dk_j, dv_j = _ring_step([dk_j, dv_j], axis_name)
        grads = [dk_j, dv_j]
    return dq, grads[0], grads[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9, 10))
def _ring_attention(
    q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k
):
    out, _ = ring_forward(
        q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k
    )
    return out.astype(v.dtype)


def _ring_attention_fwd(
    q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k
):
    """Saves Q, K, V, O and L of this device's rows; the backward runs the ring again."""
    out, lse = ring_forward(
        q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k
    )
    return out.astype(v.dtype), (q, k, v, out, lse, real, positions)


def _ring_attention_bwd(is_causal, window, chunks, axis_name, block_q, block_k, saved, d_out):
    q, k, v, out, lse, real, positions = saved
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
        axis_name,
        block_q,
        block_k,
    )
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    positions: jax.Array,
    key_padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    chunks: int = 1,
    axis_name: str = "seq",
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Ring attention over ``axis_name``; arguments and shapes as :func:`context_attention`.

    Forward: W - 1 ring steps (K, V, padding mask, positions); backward: W steps (the same,
    then dK and dV home). Padded keys are zeroed first (``hide_masked_keys``).
    """
    real, block_q, block_k = _arguments(
        q, k, v, positions, key_padding_mask, chunks, window, block_q, block_k
    )
    k, v = hide_masked_keys(k, v, None, real, is_causal=False, q_len=q.shape[2])
    return _ring_attention(
        q, k, v, real, positions, is_causal, window, chunks, axis_name, block_q, block_k
    )


def all_gather_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    positions: jax.Array,
    key_padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    window: int | None = None,
    chunks: int = 1,
    axis_name: str = "seq",
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """All-gather attention over ``axis_name``; arguments and shapes as
    :func:`context_attention` (``chunks`` is checked, not used: every local query meets the
    whole sequence).

    Forward: 4 all-gathers (K, V, padding mask, positions); backward: 2 reduce-scatters
    (dK, dV), by autodiff.
    """
    real, block_q, block_k = _arguments(
        q, k, v, positions, key_padding_mask, chunks, window, block_q, block_k
    )
    k_all = lax.all_gather(k, axis_name, axis=2, tiled=True)  # (B, G, T, hd)
    v_all = lax.all_gather(v, axis_name, axis=2, tiled=True)
    real_all = lax.all_gather(real, axis_name, axis=1, tiled=True)  # (B, T)
    pos_all = lax.all_gather(positions, axis_name, axis=0, tiled=True)  # (T,)
    mask = position_mask(positions, pos_all, is_causal, window)
    return flash_attention(
        q, k_all, v_all, mask, key_padding_mask=real_all, block_q=block_q, block_k=block_k
    )


def count_collectives(jaxpr) -> collections.Counter:
    """How many equations of each collective (``ppermute``, ``all_gather``,
    ``reduce_scatter``, ``psum``...) a closed jaxpr holds, sub-jaxprs included (the bodies of
    ``shard_map``, ``cond``, ``custom_vjp``...). One ``ppermute`` equation is one ring step."""
    names = {"ppermute", "all_gather", "reduce_scatter", "psum", "all_to_all", "psum_scatter"}
    counts: collections.Counter = collections.Counter()

    def visit(inner) -> None:
        for eqn in inner.eqns:
            if eqn.primitive.name in names:
                counts[eqn.primitive.name] += 1
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else (param,):
                    if hasattr(sub, "eqns"):
                        visit(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        visit(sub.jaxpr)

    visit(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr)
    return counts
