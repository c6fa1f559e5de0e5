"""Validation of the model's call arguments, shared by both implementations.

Each framework passes its arrays here as NumPy arrays when their values are concrete (so
ids and masks are checked value by value), or as a :class:`Spec` of shape and dtype kind
while tracing (``jax.jit``, ``torch.compile``), when only shapes and dtypes can be checked.

Every gather from a table is checked here, on host arrays, before either framework reads a
row: token ids against ``vocab_size``, token types against ``type_vocab_size``, positions
against ``max_len`` (0..T-1 by shape; RoBERTa's, computed from the ids by
:func:`position_ids` exactly as the models compute them, by value). A new table gets its
check through :func:`check_rows`, so that both frameworks raise the same ``ValueError``.
ViT's patch positions cannot leave their table: the pixel shape is checked exactly and the
config holds ``max_len = n_patches + 1``.

Weights given to a model are checked here too (:func:`check_finite_weights`): a NaN or Inf
in a checkpoint is refused by name unless the caller opts out.

Integer arguments (ids, token types, 0/1 masks) of any NumPy integer dtype are accepted and,
once their values are checked, each framework casts them to :data:`INDEX_DTYPE` at the
model's boundary, so that nothing downstream (``nn.Embedding``, the cumulative sum of
RoBERTa's positions) ever sees a narrow or unsigned dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from shared.config import EncoderConfig
from shared.layouts import CheckpointError

__all__ = [
    "INDEX_DTYPE",
    "Spec",
    "check_finite_weights",
    "check_inputs",
    "check_key_padding_mask",
    "check_mask_shape",
    "check_pixels",
    "check_rows",
    "position_ids",
]

# The one dtype of indices inside both models. int32: JAX without ``jax_enable_x64`` has no
# int64, and every value it carries is checked to be below a table size (host arrays), so it
# fits; positions are cumulative sums of at most T ones, far below 2**31 - 1.
INDEX_DTYPE = np.dtype(np.int32)


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
        check_rows("input_ids", input_ids, "vocab_size", cfg.vocab_size)
        if cfg.position_pad_id is not None:
            _check_padded_positions(cfg, input_ids)

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
            check_rows("token_type_ids", token_type_ids, "type_vocab_size", cfg.type_vocab_size)


def check_rows(name: str, index: np.ndarray, table: str, rows: int, *, why: str = "") -> None:
    """Raise ``ValueError`` unless every value of the host array ``index`` lies in
    [0, ``rows``): the rows of the table named ``table``. Compared as Python integers, so a
    uint64 above int32's range is reported as it is, never wrapped. ``why`` is appended."""
    if not index.size:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= rows:
        raise ValueError(f"{name} must lie in [0, {table}={rows}), got min {lo}, max {hi}{why}")


def position_ids(cfg: EncoderConfig, input_ids: np.ndarray) -> np.ndarray:
    """(B, T) the position of each token, as both models compute it: 0..T-1, or, with
    ``position_pad_id`` (RoBERTa, ``create_position_ids_from_input_ids`` in transformers),
    real (non-pad) tokens numbered from pad + 1 in order, and pads at pad. int64."""
    ids = np.asarray(input_ids)
    b, t = ids.shape
    if cfg.position_pad_id is None:
        return np.broadcast_to(np.arange(t, dtype=np.int64), (b, t))
    real = (ids != cfg.position_pad_id).astype(np.int64)
    return np.cumsum(real, axis=1) * real + cfg.position_pad_id


def _check_padded_positions(cfg: EncoderConfig, input_ids: np.ndarray) -> None:
    pad = cfg.position_pad_id
    real = int((input_ids != pad).sum(axis=1).max())
    why = (
        f": with position_pad_id={pad}, real (non-pad) tokens are numbered from {pad + 1}, so "
        f"a row holds at most max_len - position_pad_id - 1 = {cfg.max_len - pad - 1} of them; "
        f"a row of input_ids holds {real}"
    )
    check_rows("position ids", position_ids(cfg, input_ids), "max_len", cfg.max_len, why=why)


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


def check_finite_weights(weights: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`~shared.layouts.CheckpointError` (a ``ValueError``) naming the first
    tensor of ``weights`` that holds a NaN or an Inf, with the count and the first index.

    Import calls it unless given ``allow_nonfinite=True``: a diverged or corrupted
    checkpoint would otherwise load silently and give NaN outputs far from the cause.
    """
    for name, array in weights.items():
        a = np.asarray(array)
        if a.dtype.kind != "f":
            a = a.astype(np.float32)  # bfloat16 (ml_dtypes) widens exactly
        bad = ~np.isfinite(a)
        if bad.any():
            n = int(bad.sum())
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise CheckpointError(
                f"tensor {name!r} holds {n} non-finite value{'s' if n > 1 else ''} (NaN or "
                f"Inf), the first at index {first}; refusing to import it "
                "(allow_nonfinite=True imports it as it is)"
            )
