"""Where two implementations part ways: compare per-layer outputs, layer by layer (NumPy only).

Both models return per-layer lists (``return_hidden_states=True``: the embeddings, then each
layer's output; ``return_attention=True``: each layer's weights). :func:`compare_layers`
measures each pair, and :func:`first_divergence` names the first layer whose difference
exceeds a tolerance from ``shared.tolerances``: errors grow with depth, so the first layer
out of tolerance is where to look for a bug.

The relative difference is measured against the tensor's scale, as the tolerance table does:
``max |a - b| / max |b|`` (an elementwise ratio explodes wherever ``b`` is near 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.tolerances import Tolerance

__all__ = ["LayerDiff", "compare_layers", "first_divergence", "format_table"]


@dataclass(frozen=True)
class LayerDiff:
    """The difference between two tensors of one layer."""

    name: str  # e.g. "hidden_states[2]" or "attention[1]"
    max_abs: float  # max |actual - expected|
    scale: float  # max |expected|
    worst_index: tuple[int, ...]  # where max_abs occurs

    @property
    def max_rel(self) -> float:
        """``max_abs / scale`` (0 when both are 0; inf when only the scale is 0)."""
        if self.scale == 0.0:
            return 0.0 if self.max_abs == 0.0 else float("inf")
        return self.max_abs / self.scale

    def within(self, tol: Tolerance) -> bool:
        """The tolerance table's test: ``max_abs <= atol + rtol * scale``."""
        return self.max_abs <= tol.atol + tol.rtol * self.scale


def compare_layers(
    actual: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    name: str,
    where: np.ndarray | None = None,
) -> list[LayerDiff]:
    """One :class:`LayerDiff` per layer for two equally long lists of same-shaped arrays.

    Args:
        actual, expected: per-layer arrays (any float dtype; compared in float64).
        name: prefix of each entry's name (``f"{name}[{i}]"``).
        where: optional boolean mask broadcastable to every array: only True elements count
            (e.g. real tokens: ``attention_mask[:, :, None]`` for (B, T, D) hidden states).
    """
    if len(actual) != len(expected):
        raise ValueError(f"{name}: {len(actual)} layers vs {len(expected)} layers")
    diffs = []
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"{name}[{i}]: shapes differ, {a.shape} vs {b.shape}")
        keep = np.ones(a.shape, bool) if where is None else np.broadcast_to(where, a.shape)
        err = np.abs(a - b)
        err = np.where(np.isnan(err), np.inf, err)  # a NaN on either side is the worst error
        err = np.where(keep, err, 0.0)
        worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
        scale = float(np.max(np.abs(b[keep]), initial=0.0))
        diffs.append(
            LayerDiff(
                name=f"{name}[{i}]",
                max_abs=float(err.max(initial=0.0)),
                scale=scale,
                worst_index=tuple(int(j) for j in worst),
            )
        )
    return diffs


def first_divergence(diffs: Sequence[LayerDiff], tol: Tolerance) -> LayerDiff | None:
    """The first entry out of tolerance, or None if all are within it."""
    return next((d for d in diffs if not d.within(tol)), None)


def format_table(hidden: Sequence[LayerDiff], attention: Sequence[LayerDiff]) -> str:
    """A text table by depth: the embeddings (depth 0, hidden state only), then each layer.

    ``hidden`` has one entry per depth (N + 1); ``attention`` one per layer (N).
    """
    if len(hidden) != len(attention) + 1:
        raise ValueError(
            f"need N + 1 hidden states for N attention layers, got {len(hidden)} and "
            f"{len(attention)}"
        )
    lines = [
        f"{'depth':>9}  {'hidden max abs':>14}  {'hidden rel':>10}  "
        f"{'attn max abs':>12}  {'attn rel':>10}"
    ]
    for depth, h in enumerate(hidden):
        label = "embedding" if depth == 0 else f"layer {depth}"
        row = f"{label:>9}  {h.max_abs:14.3e}  {h.max_rel:10.3e}"
        if depth > 0:
            a = attention[depth - 1]
            row += f"  {a.max_abs:12.3e}  {a.max_rel:10.3e}"
        lines.append(row)
    return "\n".join(lines)
