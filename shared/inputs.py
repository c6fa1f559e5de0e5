"""Validation of the model's call arguments, shared by both implementations.

Each framework passes its arrays here as NumPy arrays when their values are concrete (so
ids and masks are checked value by value), or as a :class:`Spec` of shape and dtype kind
while tracing (``jax.jit``, ``torch.compile``), when only shapes and dtypes can be checked.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from shared.config import EncoderConfig

__all__ = ["Spec", "check_inputs", "check_key_padding_mask", "check_mask_shape", "check_pixels"]


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
    if input_ids is None:
        raise ValueError("input_ids (batch, seq_len) is required by a text model, got None")
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


def check_key_padding_mask(shape: tuple[int, ...], kind: str, b: int, s: int) -> None:
    """A key padding mask is boolean (B, S), True = real key."""
    if kind != "b" or shape != (b, s):
        raise ValueError(
            f"key_padding_mask must be boolean of shape (B, S) = ({b}, {s}), "
            f"got dtype kind {kind!r} and shape {shape}"
        )


def check_pixels(
    cfg: EncoderConfig,
    pixel_values: np.ndarray | Spec | None,
    *,
    input_ids: bool,
    attention_mask: bool,
    token_type_ids: bool,
) -> None:
    """The call of a ViT: ``pixel_values`` (B, C, H, W) floats only. The flags say which
    token arguments were given (each an error here, as the reverse is for a text model).
    Also called for a text model given no ``input_ids``, to say what it needs."""
    if not cfg.image_size and pixel_values is None:
        raise ValueError("input_ids (batch, seq_len) is required by a text model, got None")
    if not cfg.image_size:
        raise ValueError(
            "pixel_values given to a text model (image_size=0); expected input_ids (batch, seq_len)"
        )
    expected = f"(batch, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size})"
    for name, given in (
        ("input_ids", input_ids),
        ("attention_mask", attention_mask),
        ("token_type_ids", token_type_ids),
    ):
        if given:
            raise ValueError(
                f"{name} given to a ViT (image_size={cfg.image_size}); expected only "
                f"pixel_values {expected}"
            )
    if pixel_values is None:
        raise ValueError(f"a ViT needs pixel_values {expected}, got None")
    shape, kind = _shape_kind(pixel_values)
    if kind != "f":
        raise TypeError(f"pixel_values must be floats, got dtype kind {kind!r} (shape {shape})")
    if len(shape) != 4 or shape[1:] != (cfg.num_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"pixel_values must have shape {expected}, got {shape}")
