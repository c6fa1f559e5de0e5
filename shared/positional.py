"""Sinusoidal positional encoding: the single definition both implementations use.

Vaswani et al. (2017), section 3.5:

    PE(pos, 2i)   = sin(pos / 10000^(2i / d))
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d))

Sines and cosines are *interleaved* along the feature axis, as in the paper and the PyTorch
tutorial (Flax's examples concatenate [sin | cos] halves instead: a different table).
"""

from __future__ import annotations

import numpy as np

__all__ = ["sinusoidal"]


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
