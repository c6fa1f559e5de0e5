"""PyTorch's own ``nn.TransformerEncoder`` and ``nn.MultiheadAttention``, built from an
``EncoderConfig`` and loaded from (or saved to) checkpoint format v1.

Mirrors ``jax_impl/native.py``: the same functions, tables and order, with Flax's modules.
These modules are what the parity tests hold ours against: code nobody here wrote.

Notation: B batch, T query length, S key length, D d_model, H heads, hd head_dim, F d_ff.

How PyTorch's modules differ from ours (each difference is pinned by a test in
``parity_tests/test_native.py``):

* weight layout: ``nn.Linear.weight`` is (out, in), format v1 is (in, out); the q, k and v
  projections are packed into one ``in_proj_weight`` (3D, D) = [W_q^T; W_k^T; W_v^T] and
  ``in_proj_bias`` (3D,) = [b_q; b_k; b_v];
* masks: a boolean ``key_padding_mask`` / ``attn_mask`` is True where a key is **ignored**,
  a float mask is **added** to the scores (``shared.masks`` converts);
* attention weights are averaged over heads unless ``average_attn_weights=False``;
* a query row with no key to attend to gives NaN (weights requested, or the inference fast
  path) or zeros (``F.scaled_dot_product_attention``); ours gives zeros;
* in eval mode under ``no_grad`` with a padding mask, ``nn.TransformerEncoder`` runs its
  nested-tensor fast path: padded positions come back as exact 0.0 (pytorch#86120);
* dropout: ``nn.TransformerEncoderLayer`` also drops attention weights and the FFN's hidden
  activations, where ours drops only sub-layer outputs (the same in eval mode).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared import layouts
from shared.config import EncoderConfig

__all__ = [
    "ATTENTION_TABLE",
    "attention_with_weights",
    "encoder_table",
    "export_attention",
    "export_encoder",
    "fast_path_eligible",
    "import_attention",
    "import_encoder",
    "native_activation",
    "native_attention",
    "native_encoder",
]

Weights = dict[str, np.ndarray]
Row = layouts.Row  # (native name, format-v1 name(s), layout)

# Layouts: shared/layouts.py.

# nn.MultiheadAttention             format v1 (under "attention.")                layout
ATTENTION_TABLE: tuple[Row, ...] = (
    ("in_proj_weight", ("q.weight", "k.weight", "v.weight"), "fused_columns_transposed"),
    ("in_proj_bias", ("q.bias", "k.bias", "v.bias"), "fused_columns"),
    ("out_proj.weight", ("out.weight",), "transpose"),
    ("out_proj.bias", ("out.bias",), "copy"),
)

# nn.TransformerEncoderLayer        format v1 (under "layers.{i}.")               layout
_LAYER_TABLE: tuple[Row, ...] = (
    *layouts.prefixed(ATTENTION_TABLE, "self_attn.", "attention."),
    ("norm1.weight", ("norm1.weight",), "copy"),
    ("norm1.bias", ("norm1.bias",), "copy"),
    ("linear1.weight", ("ffn.in.weight",), "transpose"),
    ("linear1.bias", ("ffn.in.bias",), "copy"),
    ("linear2.weight", ("ffn.out.weight",), "transpose"),
    ("linear2.bias", ("ffn.out.bias",), "copy"),
    ("norm2.weight", ("norm2.weight",), "copy"),
    ("norm2.bias", ("norm2.bias",), "copy"),
)

# nn.TransformerEncoder(norm=...)   format v1                                     layout
_FINAL_NORM_TABLE: tuple[Row, ...] = (
    ("norm.weight", ("final_norm.weight",), "copy"),
    ("norm.bias", ("final_norm.bias",), "copy"),
)


def encoder_table(n_layers: int, *, final_norm: bool) -> list[Row]:
    """Every parameter of the native encoder stack with its format-v1 source, in order."""
    rows = layouts.stacked(_LAYER_TABLE, n_layers, "layers.{i}.")
    return rows + list(_FINAL_NORM_TABLE if final_norm else ())


# --- building the native modules ---------------------------------------------------------


def native_activation(name: str) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """The ``activation`` argument of ``nn.TransformerEncoderLayer`` for our activation name.

    PyTorch takes the strings "relu" and "gelu" (exact erf); the tanh approximation has no
    string, so it is passed as a callable (which rules out the fast path).
    """
    if name in ("relu", "gelu"):
        return name
    if name == "gelu_tanh":
        return functools.partial(F.gelu, approximate="tanh")
    raise ValueError(f"activation={name!r} has no nn.TransformerEncoderLayer equivalent")


def fast_path_eligible(cfg: EncoderConfig) -> bool:
    """Whether ``nn.TransformerEncoder`` can take its nested-tensor inference fast path.

    PyTorch's own checklist (``TransformerEncoder.__init__``): post-norm, activation
    ``relu`` or ``gelu`` (not a callable), an even number of heads (batch_first, biases and
    equal eps hold for every module built here). Built with ``enable_nested_tensor`` set to
    this, so PyTorch never warns that it had to turn it off.
    """
    return not cfg.norm_first and cfg.activation in ("relu", "gelu") and cfg.n_heads % 2 == 0


def native_attention(
    d_model: int, n_heads: int, *, dropout: float = 0.0, dtype: torch.dtype | None = None
) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` with batch-first inputs (B, T, D), as all our modules take."""
    return nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True, dtype=dtype)


def native_encoder(
    cfg: EncoderConfig, *, dtype: torch.dtype | None = None
) -> nn.TransformerEncoder:
    """``nn.TransformerEncoder`` with the layers, eps, activation and norm placement of ``cfg``.

    The stack only: no embeddings (``cfg.vocab_size``, ``max_len``, ``positional`` are not
    used). ``cfg.final_norm`` becomes ``norm=nn.LayerNorm``. Starts in train mode, as every
    PyTorch module; its parameters are PyTorch's initialisation until :func:`import_encoder`.
    """
    layer = nn.TransformerEncoderLayer(
        d_model=cfg.d_model,
        nhead=cfg.n_heads,
        dim_feedforward=cfg.d_ff,
        dropout=cfg.dropout,
        activation=native_activation(cfg.activation),
        layer_norm_eps=cfg.layer_norm_eps,
        batch_first=True,
        norm_first=cfg.norm_first,
        dtype=dtype,
    )
    norm = (
        nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=dtype) if cfg.final_norm else None
    )
    return nn.TransformerEncoder(
        layer, cfg.n_layers, norm=norm, enable_nested_tensor=fast_path_eligible(cfg)
    )


def attention_with_weights(
    mha: nn.MultiheadAttention,
    x: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention through ``mha``, returning ``(output (B, T, D), weights (B, H, T, S))``.

    Masks in PyTorch's convention: ``key_padding_mask`` (B, S), ``attn_mask`` (T, S) or
    (B*H, T, S), boolean True = ignore, or float = added to the scores.
    """
    return mha(
        x,
        x,
        x,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask,
        need_weights=True,
        average_attn_weights=False,  # per head, as ours; the default averages them
    )


# --- weights ---------------------------------------------------------------------------------


def import_attention(
    mha: nn.MultiheadAttention, weights: Weights, *, prefix: str = ""
) -> nn.MultiheadAttention:
    """Copy format-v1 attention weights (``{prefix}q.weight`` ... ``{prefix}out.bias``) into ``mha``.

    ``prefix`` selects one layer of a whole checkpoint, e.g. ``"layers.0.attention."``.
    """
    rows = layouts.prefixed(ATTENTION_TABLE, ours=prefix)
    _copy_in(mha, rows, weights, mha.num_heads)
    return mha


def export_attention(mha: nn.MultiheadAttention, *, prefix: str = "") -> Weights:
    """The weights of ``mha`` in format v1, names ``{prefix}q.weight`` ... ``{prefix}out.bias``."""
    rows = layouts.prefixed(ATTENTION_TABLE, ours=prefix)
    return _copy_out(mha, rows)


def import_encoder(encoder: nn.TransformerEncoder, weights: Weights) -> nn.TransformerEncoder:
    """Copy the ``layers.*`` and ``final_norm.*`` tensors of a format-v1 map into ``encoder``.

    Other tensors (the embeddings) are not read, so a whole checkpoint can be passed.
    """
    _copy_in(encoder, _table_of(encoder), weights, encoder.layers[0].self_attn.num_heads)
    return encoder


def export_encoder(encoder: nn.TransformerEncoder) -> Weights:
    """The ``layers.*`` (and ``final_norm.*``) tensors of format v1, from ``encoder``."""
    return _copy_out(encoder, _table_of(encoder))


def _table_of(encoder: nn.TransformerEncoder) -> list[Row]:
    return encoder_table(len(encoder.layers), final_norm=encoder.norm is not None)


def _copy_in(module: nn.Module, rows: Sequence[Row], weights: Weights, n_heads: int) -> None:
    shapes = {native: tuple(module.get_parameter(native).shape) for native, _, _ in rows}
    arrays = layouts.to_outside(rows, weights, shapes=shapes, n_heads=n_heads)
    with torch.no_grad():
        for native, array in arrays.items():
            param = module.get_parameter(native)
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(param.dtype))


def _copy_out(module: nn.Module, rows: Sequence[Row]) -> Weights:
    arrays = {}
    for native, _, _ in rows:
        t = module.get_parameter(native).detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()  # NumPy has no bfloat16
        arrays[native] = t.numpy()
    return layouts.from_outside(rows, arrays)  # copies, never views of the parameters
