"""The sharding plan for many devices, once, as rules on logical axes (NumPy only).

Both ``torch_impl/parallel.py`` and ``jax_impl/parallel.py`` read this module, so the plan
cannot drift between them. Every tensor's logical axes come from ``shared/tensors.py``; the
plan is rules ``(logical axis, mesh axis)``, in the manner of MaxText's
``logical_axis_rules``. The mesh has three named axes:

* ``"data"``: data parallelism. Each data rank computes a slice of the batch; gradients are
  averaged over ``"data"`` so that they equal the gradients of the global batch.
* ``"model"``: tensor parallelism (Megatron's pairing), :data:`TENSOR_PARALLEL`: "heads",
  "kv_heads" and "mlp" on "model" (gate and input projections of a GLU alike, both
  "mlp" columns; grouped K/V heads split by whole heads, so ``n_kv_heads`` must divide by
  "model", :func:`check_model_split`; q/k norm weights, over "head_dim", replicated). ``q``, ``k``, ``v`` and ``ffn.in`` are then split by output columns,
  head-aligned (whole heads per device: head ``h`` is columns ``h*hd:(h+1)*hd``); ``out``
  and ``ffn.out`` by input rows. Each block then needs one all-reduce of its output: one
  after attention, one after the feed-forward network. Embeddings and norms are replicated.
* ``"seq"``: context parallelism. The activations' sequence axis is split across the "seq"
  ranks (:data:`ACTIVATIONS`); attention then needs the other ranks' keys and values, which
  ``torch_impl/context.py`` and ``jax_impl/context.py`` bring by an all-gather or a ring.
  Parameters have no sequence axis: they are whole along "seq". With causal attention the
  sequence can be split in load-balanced order (:func:`seq_positions`).

With ``fsdp=True``, :data:`FSDP` adds rules that shard the parameters (and their optimizer
state) along ``"data"`` too: embedding tables by their rows, every other tensor on its
"embed" axis, and a tensor without one (a q, k, v or ffn.in bias) on its "heads" or "mlp"
axis. PyTorch's FSDP2 follows the same table (``fully_shard``'s ``shard_placement_fn``).

Placements that changed when the plan became rules on logical axes (the numbers are the
same either way): with ``fsdp``, q, k, v and ffn.in weights (embed, heads|mlp) used to be
split along "data" on their output axis (PyTorch's dim 0) and are now split on their embed
axis, as out and ffn.out weights already were: one rule, ("embed", "data"), instead of a
per-framework storage detail. Tensors whose only "data" axis used to be their first are
now split where the rules say: the embeddings' LayerNorm ("embed_table") stays whole along
"data" (no rule names "embed_table"), ELECTRA's projection is split on its output (embed)
axis instead of its input axis, and ViT's patch weight, patch bias and class token on
their embed axis. Embedding tables, norms, biases and the out and ffn.out weights are
placed as before.

How rules apply (:func:`spec`): each rule in order gives its mesh axis to the tensor's axis
of that logical name, unless the tensor already uses that mesh axis or the mesh axes on
that array axis would not divide it; a tensor axis that no rule names stays whole. So a
tensor uses each mesh axis at most once, and an axis that a mesh axis does not divide stays
whole along it (FSDP2 pads such a dim 0 instead; the numbers are the same either way).

A new parallelism is more rules: a new tensor needs none, only its logical axes.

A spec is one entry per array axis: ``None`` (whole), ``"model"``, ``"data"``, or a tuple
of both (the axis split over both mesh axes, in rule order: ``"model"`` major).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from shared.config import EncoderConfig
from shared.tensors import axes_of, tensors

__all__ = [
    "ACTIVATIONS",
    "AXES",
    "COLUMNS",
    "FSDP",
    "REPLICATED",
    "ROWS",
    "TENSOR_PARALLEL",
    "check_batch",
    "check_mesh",
    "check_model_split",
    "check_seq_split",
    "collective_bytes",
    "context_bytes",
    "rules",
    "seq_order",
    "seq_positions",
    "spec",
    "tensor_parallel_style",
]

AXES = ("data", "model", "seq")

Rule = tuple[str, str]  # (logical axis, mesh axis)

# Tensor parallelism: the attention heads and the feed-forward hidden units on "model".
TENSOR_PARALLEL: tuple[Rule, ...] = (("heads", "model"), ("kv_heads", "model"), ("mlp", "model"))
# Fully sharded data parallelism: every parameter also on "data". Embedding tables by their
# rows (sharded along their width, a lookup would come out split along D by "data", not by
# the batch), every other tensor by its "embed" axis, else by its "heads" or "mlp" axis.
FSDP: tuple[Rule, ...] = (
    ("vocab", "data"),
    ("positions", "data"),
    ("types", "data"),
    ("embed", "data"),
    ("heads", "data"),
    ("kv_heads", "data"),
    ("mlp", "data"),
)

# Activations (batch, length, heads, ...): the batch on "data", the sequence on "seq", the
# heads on "model" (inside attention, as the column-split q, k, v leave them).
ACTIVATIONS: tuple[Rule, ...] = (("batch", "data"), ("length", "seq"), ("heads", "model"))

COLUMNS = "columns"  # split by output columns on "model": weight (in, out/M), bias (out/M,)
ROWS = "rows"  # split by input rows on "model": weight (in/M, out), bias whole
REPLICATED = "replicated"

Spec = tuple[str | tuple[str, ...] | None, ...]


def rules(*, fsdp: bool = False) -> tuple[Rule, ...]:
    """The plan's rules, in order: tensor parallelism, then FSDP's if ``fsdp``."""
    return TENSOR_PARALLEL + (FSDP if fsdp else ())


def spec(
    name: str, shape: Sequence[int], *, fsdp: bool = False, data: int = 1, model: int = 1
) -> Spec:
    """The mesh axes of each axis of the format-v1 tensor ``name`` of ``shape``.

    ``layers.0.attention.q.weight`` (D, D), logical axes ("embed", "heads") ->
    ``(None, "model")``; with ``fsdp`` -> ``("data", "model")``. ``data`` and ``model`` are
    the mesh sizes, used only to leave whole an axis that they do not divide.
    """
    logical = axes_of(name)
    if len(logical) != len(shape):
        raise ValueError(
            f"{name!r} has logical axes {logical}, expected a shape of {len(logical)} axes, "
            f"got {tuple(shape)}"
        )
    sizes = {"data": data, "model": model}
    axes: list[list[str]] = [[] for _ in shape]
    for axis_name, mesh_axis in rules(fsdp=fsdp):
        if axis_name not in logical or any(mesh_axis in a for a in axes):
            continue
        i = logical.index(axis_name)
        if shape[i] % (math.prod(sizes[m] for m in axes[i]) * sizes[mesh_axis]) == 0:
            axes[i].append(mesh_axis)
    return tuple(None if not a else a[0] if len(a) == 1 else tuple(a) for a in axes)


def tensor_parallel_style(name: str) -> str:
    """How the linear layer of the format-v1 tensor ``name`` is split on "model": COLUMNS
    (its output axis), ROWS (its input axis) or REPLICATED.

    Megatron's names for the two halves of the pairing; ``torch_impl.parallel`` turns them
    into ``ColwiseParallel`` and ``RowwiseParallel``.
    """
    weight = name.removesuffix(".bias") + ".weight" if name.endswith(".bias") else name
    logical = axes_of(weight)
    placed = spec(weight, (1,) * len(logical))  # sizes 1: every rule applies
    if len(placed) == 2 and placed[1] == "model":
        return COLUMNS
    if len(placed) == 2 and placed[0] == "model":
        return ROWS
    return REPLICATED


def check_mesh(axis_names: Sequence[str], shape: Sequence[int], devices: Sequence[str]) -> None:
    """A mesh must have the axes ("data", "model", "seq") and fit in the devices present."""
    if tuple(axis_names) != AXES:
        raise ValueError(f"mesh axes must be {AXES}, got {tuple(axis_names)}")
    sizes = " x ".join(f"{a}={n}" for a, n in zip(AXES, shape, strict=True))
    if any(size < 1 for size in shape):
        raise ValueError(f"mesh sizes must be >= 1, got {sizes}")
    needed = math.prod(shape)
    if needed > len(devices):
        raise ValueError(
            f"mesh {sizes} needs {needed} devices, got {len(devices)}: {', '.join(devices)}"
        )


def check_model_split(cfg: EncoderConfig, model: int) -> None:
    """Tensor parallelism over ``model`` devices needs whole heads (query and K/V) and whole
    FFN columns. ValueError naming the count that ``model`` does not divide."""
    if cfg.n_heads % model != 0:
        raise ValueError(
            f"n_heads={cfg.n_heads} is not divisible by the mesh's model={model}: "
            "tensor parallelism gives each device whole heads"
        )
    if cfg.kv_heads % model != 0:
        raise ValueError(
            f"n_kv_heads={cfg.kv_heads} is not divisible by the mesh's model={model}: "
            "tensor parallelism gives each device whole K/V heads, those of its query heads "
            "(use a model axis that divides n_kv_heads)"
        )
    if cfg.d_ff % model != 0:
        raise ValueError(f"d_ff={cfg.d_ff} is not divisible by the mesh's model={model}")


def check_batch(batch: int, data: int) -> None:
    """Data parallelism needs the same number of sequences on every data rank."""
    if batch % data != 0:
        raise ValueError(
            f"batch={batch} is not divisible by the mesh's data={data}: every data rank "
            "needs the same number of sequences"
        )


def check_seq_split(seq_len: int, seq: int, *, load_balance: bool = False) -> None:
    """Context parallelism gives every "seq" rank the same number of positions: ``seq_len``
    must divide into ``seq`` shards (``2 * seq`` chunks with ``load_balance``)."""
    if seq < 1:
        raise ValueError(f"the mesh's seq must be >= 1, got seq={seq}")
    parts = 2 * seq if load_balance else seq
    if seq_len % parts != 0:
        what = f"2 * seq = {parts} chunks (load balancing)" if load_balance else f"seq={seq}"
        raise ValueError(
            f"seq_len={seq_len} is not divisible by the mesh's {what}: every seq rank "
            "needs the same number of positions"
        )


def seq_positions(seq_len: int, seq: int, rank: int, *, load_balance: bool = False):
    """The global positions (int64, ascending within each chunk) that "seq" rank ``rank``
    holds, in the order it holds them.

    Without load balancing rank r holds the r-th of ``seq`` contiguous shards. With it the
    sequence is cut into 2W chunks (W = ``seq``) and rank r holds chunks r and 2W-1-r: under
    causal attention the later a query, the more keys it sees, so pairing an early chunk with
    a late one gives every rank the same number of (query, key) pairs to compute. (The
    "zig-zag" order of ring attention implementations such as Megatron-LM's context
    parallelism; Liu et al., "Ring Attention with Blockwise Transformers", 2023, for the ring.)

    ``seq_positions(8, 2, 0, load_balance=True)`` -> ``[0, 1, 6, 7]``.
    """
    check_seq_split(seq_len, seq, load_balance=load_balance)
    if not 0 <= rank < seq:
        raise ValueError(f"rank must be in [0, {seq}), got {rank}")
    if not load_balance:
        size = seq_len // seq
        return np.arange(rank * size, (rank + 1) * size, dtype=np.int64)
    size = seq_len // (2 * seq)
    first, second = rank, 2 * seq - 1 - rank
    return np.concatenate(
        [
            np.arange(first * size, (first + 1) * size, dtype=np.int64),
            np.arange(second * size, (second + 1) * size, dtype=np.int64),
        ]
    )


def seq_order(seq_len: int, seq: int, *, load_balance: bool = False):
    """(seq_len,) int64: the global positions in the order the "seq" ranks hold them, rank 0
    first. ``x[..., seq_order(...), ...]`` puts a sequence in that order (split it in ``seq``
    equal contiguous shards along that axis); ``np.argsort`` of it puts it back."""
    return np.concatenate(
        [seq_positions(seq_len, seq, r, load_balance=load_balance) for r in range(seq)]
    )


def collective_bytes(
    cfg: EncoderConfig,
    *,
    batch: int,
    seq_len: int,
    data: int,
    model: int,
    fsdp: bool = False,
    phase: str = "train_step",
    bytes_per_element: int = 4,
    seq: int = 1,
) -> dict[str, int]:
    """Analytic bytes that one step hands to collectives, per device (payload sizes).

    With ``seq`` > 1 a device holds T/seq positions (the activations below are that long),
    the "seq" ranks' gradients are reduced with the "data" ranks', and context parallelism's
    own traffic is :func:`context_bytes`.

    * ``tp_activations``: tensor parallelism all-reduces one (B/data, T, D) activation after
      attention and one after the feed-forward block, per layer, forward; the backward pass
      all-reduces as many input gradients (of the column-split q/k/v and ffn.in).
    * ``dp_gradients``: data parallelism all-reduces each device's gradients (its 1/model
      share of the tensor-parallel weights, all of the replicated ones); with ``fsdp`` a
      reduce-scatter of the same size instead.
    * ``fsdp_params``: FSDP all-gathers the parameters for the forward and again for the
      backward pass.

    A ring all-reduce of N bytes over P devices sends ``2 (P - 1) / P * N`` bytes from each
    device; a reduce-scatter or all-gather half of that. The values here are the payloads N.
    """
    if phase not in ("forward", "forward_backward", "train_step"):
        raise ValueError(f"phase={phase!r} must be forward, forward_backward or train_step")
    backward = phase != "forward"
    activation = (batch // data) * (seq_len // seq) * cfg.d_model * bytes_per_element
    per_pass = 2 * cfg.n_layers * activation if model > 1 else 0
    params = _parameter_elements_per_model_rank(cfg, model) * bytes_per_element
    return {
        "tp_activations": per_pass * (2 if backward else 1),
        "dp_gradients": params if backward and data * seq > 1 else 0,
        "fsdp_params": params * (2 if backward else 1) if fsdp and data > 1 else 0,
    }


def context_bytes(
    cfg: EncoderConfig,
    *,
    batch: int,
    seq_len: int,
    seq: int,
    method: str = "ring",
    data: int = 1,
    model: int = 1,
    phase: str = "train_step",
    bytes_per_element: int = 4,
    index_bytes: int = 8,
) -> dict[str, int]:
    """Analytic bytes that context parallelism hands to collectives in one step, per device:
    ``{"forward": ..., "backward": ...}`` (backward 0 for ``phase="forward"``), over all
    layers, without activation checkpointing (which runs the forward's again).

    A device holds b = B/data sequences, g = n_kv_heads/model K/V heads of hd features, and
    n = T/seq positions; W = seq. Per layer:

    * ``"ring"``: W - 1 steps pass a block (K, V: 2 b g n hd elements; the key padding mask:
      b n bytes; the positions: n ``index_bytes``) to the next device; the backward passes
      the same W - 1 blocks and, at each of W steps, the block's dK and dV. K, V, dK and dV
      travel in the accumulator dtype (float32, float64 for float64): 4 bytes for bfloat16.
      A step's payload is what it sends.
    * ``"all_gather"``: the forward gathers K, V (in the inputs' dtype), the padding mask and
      the positions of the whole sequence (payload: the gathered W n rows); the backward
      reduce-scatters dK and dV of the whole sequence (JAX; PyTorch on gloo all-reduces the
      same payload, which sends twice the bytes).

    Sent per device: a ring step sends its payload; an all-gather or reduce-scatter of
    payload N sends (W - 1)/W N, so both methods send (W - 1) blocks forward.
    ``index_bytes``: 8 for PyTorch's int64 positions, 4 for JAX's int32.
    """
    if phase not in ("forward", "forward_backward", "train_step"):
        raise ValueError(f"phase={phase!r} must be forward, forward_backward or train_step")
    if method not in ("ring", "all_gather"):
        raise ValueError(f"method must be one of ('ring', 'all_gather'), got {method!r}")
    if seq == 1:
        return {"forward": 0, "backward": 0}
    b, g, n = batch // data, cfg.kv_heads // model, seq_len // seq
    kv = 2 * b * g * n * cfg.head_dim  # elements of K and V (or dK and dV) of n positions
    if method == "ring":
        acc = 8 if bytes_per_element == 8 else 4
        block = kv * acc + b * n + n * index_bytes
        forward = (seq - 1) * block
        backward = (seq - 1) * block + seq * kv * acc
    else:
        forward = seq * (kv * bytes_per_element + b * n + n * index_bytes)
        backward = seq * kv * bytes_per_element
    return {
        "forward": cfg.n_layers * forward,
        "backward": cfg.n_layers * backward if phase != "forward" else 0,
    }


def _parameter_elements_per_model_rank(cfg: EncoderConfig, model: int) -> int:
    """Parameters held by one "model" rank: a tensor split on "model" counts 1/model."""
    total = 0
    for tensor in tensors(cfg):
        placed = spec(tensor.name, tensor.shape)
        split = any("model" in ((a,) if isinstance(a, str) else a or ()) for a in placed)
        total += math.prod(tensor.shape) // (model if split else 1)
    return total
