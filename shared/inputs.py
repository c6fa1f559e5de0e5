"""Validation of the model's call arguments, shared by both implementations.

Each framework passes its arrays here as NumPy arrays when their values are concrete (so
ids and masks are checked value by value), or as a :class:`Spec` of shape and dtype kind
while tracing (``jax.jit``, ``torch.compile``), when only shapes and dtypes can be checked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from shared.config import EncoderConfig

__all__ = ["Spec", "check_inputs", "check_mask_shape"]


class Spec(NamedTuple):
    """Shape and NumPy dtype kind ('b' bool, 'i' int, 'u' unsigned, 'f' float) of an array."""

    shape: tuple[int, ...]
    kind: str


def _shape_kind(x: np.ndarray | Spec) -> tuple[tuple[int, ...], str]:
    if isinstance(x, Spec):
        return tuple(x.shape), x.kind
    return tuple(x.shape), x.dtype.kind


def check_inputs(
    cfg: EncoderConfig,
    input_ids: np.ndarray | Spec,
    attention_mask: np.ndarray | Spec | None = None,
    token_type_ids: np.ndarray | Spec | None = None,
) -> None:
    """Raise ``ValueError`` (or ``TypeError`` for a wrong dtype) naming what is wrong."""
    shape, kind = _shape_kind(input_ids)
    if kind not in "iu":
        raise TypeError(f"input_ids must be integers, got dtype kind {kind!r} (shape {shape})")
    if len(shape) != 2:
        raise ValueError(f"input_ids must have shape (batch, seq_len), got shape {shape}")
    seq_len = shape[1]
    if seq_len == 0:
        raise ValueError("input_ids has seq_len 0; need at least one token")
    if cfg.positional == "learned" and seq_len > cfg.max_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds max_len={cfg.max_len}: learned positions cannot extend "
            "beyond the table (sinusoidal ones can)"
        )
    if isinstance(input_ids, np.ndarray) and input_ids.size:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={cfg.vocab_size}), got min {lo}, max {hi}"
            )

    if attention_mask is not None:
        m_shape, m_kind = _shape_kind(attention_mask)
        if m_shape != shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {shape}, got {m_shape}"
            )
        if m_kind not in "biu":
            raise TypeError(
                f"attention_mask must be bool or 0/1 integers (1 = real token), got dtype kind "
                f"{m_kind!r}; convert an additive float mask with shared.masks.from_additive"
            )
        if isinstance(attention_mask, np.ndarray) and m_kind != "b":
            bad = np.setdiff1d(np.unique(attention_mask), [0, 1])
            if bad.size:
                raise ValueError(
                    f"attention_mask must hold only 0 and 1 (1 = real token), got {bad[:5].tolist()}"
                )

    if token_type_ids is not None:
        if cfg.type_vocab_size == 0:
            raise ValueError("token_type_ids given, but the config has type_vocab_size=0")
        t_shape, t_kind = _shape_kind(token_type_ids)
        if t_shape != shape:
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {shape}, got {t_shape}"
            )
        if t_kind not in "iu":
            raise TypeError(f"token_type_ids must be integers, got dtype kind {t_kind!r}")
        if isinstance(token_type_ids, np.ndarray) and token_type_ids.size:
            lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
            if lo < 0 or hi >= cfg.type_vocab_size:
                raise ValueError(
                    f"token_type_ids must lie in [0, type_vocab_size={cfg.type_vocab_size}), "
                    f"got min {lo}, max {hi}"
                )


def check_mask_shape(shape: tuple[int, ...], kind: str, *, b: int, h: int, t: int, s: int) -> None:
    """A general attention mask must be boolean and broadcast to (B, H, T, S) as (B|1, H|1, T|1, S)."""
    if kind != "b":
        raise TypeError(
            f"attention mask must be boolean (True = may attend), got dtype kind {kind!r}; "
            "convert PyTorch-style masks with shared.masks"
        )
    ok = (
        len(shape) == 4
        and shape[0] in (1, b)
        and shape[1] in (1, h)
        and shape[2] in (1, t)
        and shape[3] == s
    )
    if not ok:
        raise ValueError(
            f"attention mask must have shape (B|1, H|1, T|1, S) = ({b}|1, {h}|1, {t}|1, {s}), "
            f"got {shape}"
        )
