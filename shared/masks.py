"""The one mask convention of this project, and converters to every other one.

Convention: a mask is boolean and **True means "may attend"** (a real token).

* ``attention_mask`` (B, S), the model's argument: 1/True = real token, 0/False = padding
  (the Hugging Face tokenizer convention).
* a general attention mask (B or 1, 1 or H, T, S): True = query t may attend to key s
  (Flax, ``jax.nn.dot_product_attention`` and ``torch.nn.functional.scaled_dot_product_attention``
  agree on this).

PyTorch's ``nn.MultiheadAttention`` and ``nn.Transformer*`` use the opposite: a boolean
``key_padding_mask`` / ``attn_mask`` is True where a position is **ignored**, and a float mask
is **added** to the scores. The converters below are the only places that polarity flips.

These functions are the NumPy definition; each framework builds the same masks from its own
arrays (``make_attention_mask`` in ``torch_impl/encoder.py`` and ``jax_impl/encoder.py``),
and the tests hold them equal to these.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "band",
    "causal",
    "from_additive",
    "from_key_padding_mask",
    "make_attention_mask",
    "padding",
    "to_additive",
    "to_key_padding_mask",
]


def padding(attention_mask: np.ndarray) -> np.ndarray:
    """(B, S) real-token mask -> (B, 1, 1, S) boolean attention mask (keys only)."""
    return np.asarray(attention_mask).astype(bool)[:, None, None, :]


def causal(q_len: int, k_len: int | None = None) -> np.ndarray:
    """(1, 1, T, S) boolean mask: query t may attend to keys s <= t."""
    k_len = q_len if k_len is None else k_len
    return np.tril(np.ones((q_len, k_len), dtype=bool))[None, None]


def band(q_len: int, k_len: int | None = None, *, window: int) -> np.ndarray:
    """(1, 1, T, S) boolean mask of sliding-window (local) attention: query t may attend to
    keys s with |t - s| <= window, 2 * window + 1 keys away from the edges. This is
    transformers' bidirectional sliding-window mask; ModernBERT's ``local_attention`` = 128
    is window = 64. With causality the band keeps t - window <= s <= t. Raises ValueError for
    a window < 1."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    k_len = q_len if k_len is None else k_len
    t = np.arange(q_len)[:, None]
    s = np.arange(k_len)[None, :]
    return (np.abs(t - s) <= window)[None, None]


def make_attention_mask(
    attention_mask: np.ndarray | None,
    *,
    is_causal: bool,
    q_len: int,
    k_len: int | None = None,
    window: int | None = None,
) -> np.ndarray | None:
    """Combine a (B, S) padding mask, causality and a sliding ``window`` (:func:`band`) into
    one (B or 1, 1, T, S) mask, or None when nothing is masked."""
    mask = None if attention_mask is None else padding(attention_mask)
    if is_causal:
        c = causal(q_len, k_len)
        mask = c if mask is None else mask & c
    if window is not None:
        w = band(q_len, k_len, window=window)
        mask = w if mask is None else mask & w
    return mask


def to_key_padding_mask(attention_mask: np.ndarray) -> np.ndarray:
    """(B, S) real-token mask -> PyTorch's ``key_padding_mask`` (True = ignore this key)."""
    return ~np.asarray(attention_mask).astype(bool)


def from_key_padding_mask(key_padding_mask: np.ndarray) -> np.ndarray:
    """PyTorch's ``key_padding_mask`` (True = ignore) -> (B, S) real-token mask (True = real)."""
    return ~np.asarray(key_padding_mask).astype(bool)


def to_additive(mask: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Boolean mask (True = attend) -> additive float mask: 0 where allowed, -inf elsewhere.

    This is what PyTorch adds to the scores when given a float ``attn_mask``. A row that is all
    -inf makes PyTorch's softmax return NaN; this project returns zeros for such rows instead.
    """
    mask = np.asarray(mask, dtype=bool)
    return np.where(mask, 0.0, -np.inf).astype(dtype)


def from_additive(additive: np.ndarray) -> np.ndarray:
    """Additive float mask -> boolean mask: True where the added value is exactly 0.

    Meant for masks made of 0 and a large negative value (-inf or the dtype's minimum); an
    additive *bias* with other values has no boolean equivalent, and raises ``ValueError``.
    """
    additive = np.asarray(additive)
    if not np.issubdtype(additive.dtype, np.floating):
        raise ValueError(f"an additive mask must be floating point, got dtype {additive.dtype}")
    blocked = additive <= np.finfo(additive.dtype).min / 2  # -inf or a huge negative value
    if not np.all((additive == 0) | blocked):
        raise ValueError(
            "additive mask holds values other than 0 and a large negative number; "
            "it is a bias, not a mask, and has no boolean equivalent"
        )
    return additive == 0
