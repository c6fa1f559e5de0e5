"""The sharding plan for many devices, once, keyed by format-v1 names (NumPy only).

Both ``torch_impl/parallel.py`` and ``jax_impl/parallel.py`` read this table, so the plan
cannot drift between them. The mesh has two named axes:

* ``"data"``: data parallelism. Each data rank computes a slice of the batch; gradients are
  averaged over ``"data"`` so that they equal the gradients of the global batch.
* ``"model"``: tensor parallelism (Megatron's pairing). ``q``, ``k``, ``v`` and ``ffn.in``
  are split by output columns, head-aligned (whole heads per device: head ``h`` is columns
  ``h*hd:(h+1)*hd``); ``out`` and ``ffn.out`` by input rows. Each block then needs one
  all-reduce of its output: one after attention, one after the feed-forward network.
  Embeddings and norms are replicated.

With ``fsdp=True`` every parameter (and its optimizer state) is also sharded along
``"data"``, on the axis that PyTorch's FSDP2 shards by default (dim 0 of the PyTorch
tensor): the output axis of linear weights (format v1 stores them (in, out)), the rows of
embedding tables, the only axis of vectors. An axis that ``"data"`` does not divide stays
whole along ``"data"`` in JAX (FSDP2 pads it instead): the numbers are the same either way.

A spec is one entry per array axis: ``None`` (whole), ``"model"``, ``"data"``, or a tuple
of both (the axis split over both mesh axes, ``"model"`` major).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from shared.config import EncoderConfig
from shared.weights import expected_shapes

__all__ = [
    "AXES",
    "COLUMNS",
    "PLAN",
    "REPLICATED",
    "ROWS",
    "check_batch",
    "check_mesh",
    "check_model_split",
    "collective_bytes",
    "layout",
    "spec",
]

AXES = ("data", "model")

COLUMNS = "columns"  # split by output columns on "model": weight (in, out/M), bias (out/M,)
ROWS = "rows"  # split by input rows on "model": weight (in/M, out), bias whole
REPLICATED = "replicated"

# format-v1 name pattern -> layout on "model". Names that match no pattern are replicated.
PLAN: tuple[tuple[str, str], ...] = (
    (r"layers\.\d+\.attention\.(q|k|v)\.(weight|bias)", COLUMNS),
    (r"layers\.\d+\.attention\.out\.(weight|bias)", ROWS),
    (r"layers\.\d+\.ffn\.in\.(weight|bias)", COLUMNS),
    (r"layers\.\d+\.ffn\.out\.(weight|bias)", ROWS),
)

Spec = tuple[str | tuple[str, ...] | None, ...]


def layout(name: str) -> str:
    """How the format-v1 tensor ``name`` is split on "model": COLUMNS, ROWS or REPLICATED."""
    for pattern, how in PLAN:
        if re.fullmatch(pattern, name):
            return how
    return REPLICATED


def spec(
    name: str, shape: Sequence[int], *, fsdp: bool = False, data: int = 1, model: int = 1
) -> Spec:
    """The mesh axes of each axis of the format-v1 tensor ``name`` of ``shape``.

    ``layers.0.attention.q.weight`` (D, D) -> ``(None, "model")``; with ``fsdp`` ->
    ``(None, ("model", "data"))``. ``data`` and ``model`` are the mesh sizes, used only to
    leave whole an axis that ``"data"`` does not divide.
    """
    axes: list[list[str]] = [[] for _ in shape]
    how = layout(name)
    is_weight = name.endswith(".weight") and len(shape) == 2
    if how == COLUMNS:
        axes[-1].append("model")  # the output columns (the bias has only those)
    elif how == ROWS and is_weight:
        axes[0].append("model")  # the input rows; the bias is whole
    if fsdp and shape:
        # FSDP2 shards PyTorch's dim 0: a linear weight's output axis (format v1: the last)
        axis = len(shape) - 1 if is_weight and not name.startswith("embeddings.") else 0
        per_model = shape[axis] // (model if "model" in axes[axis] else 1)
        if per_model % data == 0:
            axes[axis].append("data")
    return tuple(None if not a else a[0] if len(a) == 1 else tuple(a) for a in axes)


def check_mesh(axis_names: Sequence[str], shape: Sequence[int], devices: Sequence[str]) -> None:
    """A mesh must have the axes ("data", "model") and fit in the devices present."""
    if tuple(axis_names) != AXES:
        raise ValueError(f"mesh axes must be {AXES}, got {tuple(axis_names)}")
    if any(size < 1 for size in shape):
        raise ValueError(f"mesh sizes must be >= 1, got data={shape[0]}, model={shape[1]}")
    needed = shape[0] * shape[1]
    if needed > len(devices):
        raise ValueError(
            f"mesh data={shape[0]} x model={shape[1]} needs {needed} devices, "
            f"got {len(devices)}: {', '.join(devices)}"
        )


def check_model_split(cfg: EncoderConfig, model: int) -> None:
    """Tensor parallelism over ``model`` devices needs whole heads and whole FFN columns."""
    if cfg.n_heads % model != 0:
        raise ValueError(
            f"n_heads={cfg.n_heads} is not divisible by the mesh's model={model}: "
            "tensor parallelism gives each device whole heads"
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
) -> dict[str, int]:
    """Analytic bytes that one step hands to collectives, per device (payload sizes).

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
    activation = (batch // data) * seq_len * cfg.d_model * bytes_per_element
    per_pass = 2 * cfg.n_layers * activation if model > 1 else 0
    params = _parameter_elements_per_model_rank(cfg, model) * bytes_per_element
    return {
        "tp_activations": per_pass * (2 if backward else 1),
        "dp_gradients": params if backward and data > 1 else 0,
        "fsdp_params": params * (2 if backward else 1) if fsdp and data > 1 else 0,
    }


def _parameter_elements_per_model_rank(cfg: EncoderConfig, model: int) -> int:
    """Parameters held by one "model" rank: a tensor split on "model" counts 1/model."""
    total = 0
    for name, shape in expected_shapes(cfg).items():
        split = any("model" in ((a,) if isinstance(a, str) else a or ()) for a in spec(name, shape))
        total += math.prod(shape) // (model if split else 1)
    return total
