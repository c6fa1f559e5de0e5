"""Positional encodings: the single NumPy definitions both implementations use.

Sinusoidal (added to the embeddings) and rotary (applied to q and k in every layer).

Vaswani et al. (2017), section 3.5:

    PE(pos, 2i)   = sin(pos / 10000^(2i / d))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d))

Sines and cosines are *interleaved* along the feature axis, as in the paper and the PyTorch
tutorial (Flax's examples concatenate [sin | cos] halves instead: a different table).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "apply_rope",
    "check_position_ids",
    "rope_angles",
    "rope_inverse_frequencies",
    "sinusoidal",
]


def sinusoidal(n_positions: int, d_model: int, *, base: float = 10000.0) -> np.ndarray:
    """The (n_positions, d_model) float64 table of sinusoidal positional encodings.

    An odd ``d_model`` is allowed: the last column is the sine of the next pair.
    """
    if n_positions < 0 or d_model < 1:
        raise ValueError(f"need n_positions >= 0 and d_model >= 1, got {n_positions}, {d_model}")
    pos = np.arange(n_positions, dtype=np.float64)[:, None]  # (P, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # (ceil(D/2),)
    angle = pos / base ** (two_i / d_model)  # (P, ceil(D/2))
    table = np.empty((n_positions, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return table


# --- rotary position embeddings ------------------------------------------------------------
#
# Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding": feature
# pair p of a head at position m is rotated by the angle m * theta_p, theta_p =
# base^(-2p / hd). Then q_m . k_n depends on the positions only through m - n. Pairs are
# (p, p + hd/2) ("rotate half", as transformers writes Llama, ModernBERT and the others),
# or (2p, 2p + 1) (``interleaved``, the paper's and GPT-J's order).


def rope_inverse_frequencies(head_dim: int, base: float) -> np.ndarray:
    """(hd/2,) float64 theta_p = base^(-2p / hd), p = 0..hd/2-1. Raises ValueError for an
    odd ``head_dim`` (features rotate in pairs) or a base <= 1."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even, got {head_dim}")
    if not base > 1.0:
        raise ValueError(f"RoPE base must be > 1, got {base!r}")
    return 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_angles(positions: np.ndarray, head_dim: int, base: float) -> np.ndarray:
    """(..., hd/2) float64 angles m * theta_p for integer ``positions`` (...)."""
    return np.asarray(positions, dtype=np.float64)[..., None] * rope_inverse_frequencies(
        head_dim, base
    )


def apply_rope(
    x: np.ndarray, positions: np.ndarray, base: float, *, interleaved: bool = False
) -> np.ndarray:
    """Rotate ``x`` (B, H, T, hd) by the positions (B|1, T), in float64.

    Pair (a, b) at angle phi becomes (a cos phi - b sin phi, a sin phi + b cos phi).
    """
    x = np.asarray(x, dtype=np.float64)
    hd = x.shape[-1]
    angles = rope_angles(positions, hd, base)[:, None]  # (B|1, 1, T, hd/2)
    cos, sin = np.cos(angles), np.sin(angles)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        return np.stack([ra, rb], axis=-1).reshape(x.shape)
    return np.concatenate([ra, rb], axis=-1)


def check_position_ids(cfg, position_ids, b: int, t: int) -> None:
    """``position_ids`` of a call: integer (B, T) or (1, T), values in [0, max_len) for a
    learned table; >= 0 for sinusoidal and rotary positions, which are computed for any
    position (as transformers computes RoPE past ``max_position_embeddings``). ``position_ids`` is a NumPy array, or
    anything with ``shape`` and ``kind`` (``shared.inputs.Spec``: values unknown, only the
    shape and dtype are checked). Raises ValueError naming what was expected and got."""
    shape = tuple(position_ids.shape)
    kind = getattr(position_ids, "kind", None) or position_ids.dtype.kind
    if kind not in "iu" or shape not in ((b, t), (1, t)):
        raise ValueError(
            f"position_ids must be integer of shape (B, T) = ({b}, {t}) or (1, {t}), got "
            f"dtype kind {kind!r} and shape {shape}"
        )
    if not isinstance(position_ids, np.ndarray) or position_ids.size == 0:
        return
    lo, hi = int(position_ids.min()), int(position_ids.max())
    upper = cfg.max_len if cfg.positional == "learned" else None
    if lo < 0 or (upper is not None and hi >= upper):
        bound = f"[0, {upper}) (max_len)" if upper is not None else ">= 0"
        raise ValueError(f"position_ids must lie in {bound}, got values in [{lo}, {hi}]")
