"""One vocabulary for every weight mapping: how a tensor outside format v1 is made of
format-v1 tensors, and back.

"Outside" is whatever holds the weights in another layout: a framework's parameter
(``nn.Linear.weight`` is (out, in)), a native module (``in_proj_weight`` packs q, k and v),
or a Hugging Face checkpoint (GPT-2's ``c_attn`` packs them by columns). Every table in the
project is a list of :data:`Row`\\ s ``(outside name, format-v1 names, layout name)``, and
every layout is a pair of inverse functions here:

    layout                    outside tensor from format-v1 tensors a_1..a_n
    copy                      a_1
    transpose                 a_1^T                       (in, out) -> (out, in)
    fused_columns             [a_1 | a_2 | a_3]           q|k|v side by side: (D, 3D), (3D,)
    fused_columns_transposed  [a_1 | a_2 | a_3]^T         PyTorch's in_proj_weight (3D, D)
    heads_out                 a_1 with its output axis split into heads: (D, D) -> (D, H, hd)
    heads_in                  a_1 with its input axis split into heads: (D, D) -> (H, hd, D)
    leading_axis              a_1[None]                   (1, D) -> (1, 1, D)
    patches                   a_1 channels-first          (C, P, P, D) -> (D, C, P, P)

Notation: D d_model, H heads, hd head_dim, C channels, P patch size.

NumPy only. :func:`check_names` is the one missing/unexpected report and
:func:`check_shapes` the one shape check that every loader uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "LAYOUTS",
    "CheckpointError",
    "Layout",
    "Row",
    "check_names",
    "check_shapes",
    "from_outside",
    "prefixed",
    "stacked",
    "to_outside",
]

Weights = dict[str, np.ndarray]
Row = tuple[str, tuple[str, ...], str]  # (outside name, format-v1 name(s), layout name)


class CheckpointError(ValueError):
    """A checkpoint or weight map that does not match the format or its config."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse maps between format-v1 arrays and one outside array."""

    join: Callable[[Sequence[np.ndarray], int], np.ndarray]  # (arrays, n_heads) -> outside
    split: Callable[[np.ndarray, int], list[np.ndarray]]  # (outside, count) -> arrays


def _heads_out(arrays: Sequence[np.ndarray], n_heads: int) -> np.ndarray:
    (a,) = arrays
    return a.reshape(*a.shape[:-1], n_heads, a.shape[-1] // n_heads)  # (D, H, hd) or (H, hd)


def _heads_in(arrays: Sequence[np.ndarray], n_heads: int) -> np.ndarray:
    (a,) = arrays
    return a.reshape(n_heads, a.shape[0] // n_heads, a.shape[1])  # (H, hd, D)


LAYOUTS: dict[str, Layout] = {
    "copy": Layout(lambda arrays, _: arrays[0], lambda a, _: [a]),
    "transpose": Layout(lambda arrays, _: arrays[0].T, lambda a, _: [a.T]),
    "fused_columns": Layout(
        lambda arrays, _: np.concatenate(arrays, axis=-1),  # (D, 3D) or (3D,)
        lambda a, count: np.split(a, count, axis=-1),  # count x (D, D) or (D,)
    ),
    "fused_columns_transposed": Layout(
        lambda arrays, _: np.concatenate(arrays, axis=-1).T,  # (3D, D): rows [q; k; v]
        lambda a, count: [b.T for b in np.split(a, count, axis=0)],  # count x (D, D)
    ),
    "heads_out": Layout(_heads_out, lambda a, _: [a.reshape(*a.shape[:-2], -1)]),
    "heads_in": Layout(_heads_in, lambda a, _: [a.reshape(-1, a.shape[-1])]),
    "leading_axis": Layout(lambda arrays, _: arrays[0][None], lambda a, _: [a[0]]),
    "patches": Layout(  # a Conv2d kernel with kernel = stride = P is a matmul over patches
        lambda arrays, _: arrays[0].transpose(3, 0, 1, 2),  # (D, C, P, P)
        lambda a, _: [a.transpose(1, 2, 3, 0)],  # (C, P, P, D)
    ),
}


def _layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def prefixed(rows: Iterable[Row], outside: str = "", ours: str = "") -> list[Row]:
    """``rows`` with ``outside`` before each outside name and ``ours`` before each format name."""
    return [(outside + o, tuple(ours + n for n in names), lay) for o, names, lay in rows]


def stacked(
    layer: Iterable[Row], n_layers: int, outside: str, ours: str = "layers.{i}."
) -> list[Row]:
    """``layer``'s rows repeated for layers 0..n_layers-1, ``{i}`` in the prefixes filled in."""
    layer = list(layer)
    return [
        row
        for i in range(n_layers)
        for row in prefixed(layer, outside.format(i=i), ours.format(i=i))
    ]


def _more(names: Sequence[str]) -> str:
    return f"; and {len(names) - 1} more" if len(names) > 1 else ""


def check_names(
    expected: Iterable[str],
    found: Iterable[str],
    *,
    detail: Callable[[str], str] = lambda name: "",
    unexpected_ok: bool = False,
    unexpected_detail: Callable[[str], str] = lambda name: "",
) -> None:
    """The one missing/unexpected report: raise :class:`CheckpointError` naming the first
    missing tensor (``detail`` says what it should be), then the first unexpected one."""
    expected, found = list(expected), list(found)
    present = set(found)
    missing = [name for name in expected if name not in present]
    if missing:
        raise CheckpointError(f"missing tensor {missing[0]!r}{detail(missing[0])}{_more(missing)}")
    wanted = set(expected)
    unexpected = sorted(name for name in present if name not in wanted)
    if unexpected and not unexpected_ok:
        raise CheckpointError(
            f"unexpected tensor {unexpected[0]!r}{unexpected_detail(unexpected[0])}"
            + _more(unexpected)
        )


def check_shapes(
    outside: str, outside_shape: tuple[int, ...], row: Row, arrays: Sequence[np.ndarray]
) -> None:
    """The one shape check: each format-v1 array must have the shape that the outside
    tensor's shape implies through the row's layout."""
    _, names, layout = row
    expected = _layout(layout).split(np.empty(outside_shape), len(names))
    for name, array, want in zip(names, arrays, expected, strict=True):
        if tuple(np.shape(array)) != want.shape:
            raise CheckpointError(
                f"tensor {name!r}: expected shape {want.shape} (for {outside!r} of shape "
                f"{outside_shape}), found {tuple(np.shape(array))}"
            )


def to_outside(
    rows: Sequence[Row],
    weights: Mapping[str, np.ndarray],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    n_heads: int = 1,
) -> Weights:
    """Outside arrays from format-v1 ``weights``: ``{outside name: array}`` for every row.

    Other tensors of ``weights`` are not read, so a whole checkpoint can be passed. With
    ``shapes`` (the outside tensors' shapes) each source is shape-checked first.
    """
    check_names([n for _, names, _ in rows for n in names], weights, unexpected_ok=True)
    out = {}
    for row in rows:
        outside, names, layout = row
        arrays = [np.asarray(weights[n]) for n in names]
        if shapes is not None:
            check_shapes(outside, shapes[outside], row, arrays)
        out[outside] = _layout(layout).join(arrays, n_heads)
    return out


def from_outside(rows: Sequence[Row], arrays: Mapping[str, np.ndarray]) -> Weights:
    """Format-v1 weights from outside ``arrays``: the inverse of :func:`to_outside`.

    Every array comes out as a C-contiguous copy, never a view of the outside one.
    """
    check_names([outside for outside, _, _ in rows], arrays, unexpected_ok=True)
    out = {}
    for outside, names, layout in rows:
        parts = _layout(layout).split(np.asarray(arrays[outside]), len(names))
        for name, part in zip(names, parts, strict=True):
            out[name] = np.array(part, order="C")
    return out
