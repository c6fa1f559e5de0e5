"""keras-hub's ``BertBackbone`` <-> format v1, in the layout vocabulary of ``shared/layouts.py``.

keras-hub (Keras 3) builds BERT from its own layers: ``keras.layers.EinsumDense`` keeps the
attention projections with the heads as their own axis, so the query kernel is (D, H, hd),
its bias (H, hd), and the output kernel (H, hd, D); the feed-forward kernels are (in, out),
as format v1 stores them. A Keras variable is named by its ``path``
(``transformer_layer_0/self_attention_layer/query/kernel``).

keras-hub's BERT computes GELU's tanh approximation (``gelu_approximate``), not the exact
GELU of Google's BERT and of ``transformers.BertModel``: only a config with
``activation="gelu_tanh"`` is the same function. Its LayerNorm epsilon is fixed at 1e-12.
The backbone also has a pooler (``pooled_dense``, tanh of a dense layer on the first
token), which format v1 does not hold: it keeps Keras's initial values and is not compared.

NumPy only: :func:`backbone_kwargs` gives ``BertBackbone``'s arguments and
:func:`to_keras` the arrays to assign, ``{variable path: array}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared import layouts
from shared.config import EncoderConfig

__all__ = ["LAYER", "POOLER", "backbone_kwargs", "from_keras", "table", "to_keras"]

# keras-hub variable path (BertBackbone)                format names                 layout
EMBEDDINGS: tuple[layouts.Row, ...] = (
    ("token_embedding/embeddings", ("embeddings.token.weight",), "copy"),
    ("position_embedding/embeddings", ("embeddings.position.weight",), "copy"),
    ("segment_embedding/embeddings", ("embeddings.token_type.weight",), "copy"),
    ("embeddings_layer_norm/gamma", ("embeddings.norm.weight",), "copy"),
    ("embeddings_layer_norm/beta", ("embeddings.norm.bias",), "copy"),
)
# under "transformer_layer_{i}/"                        under "layers.{i}."
LAYER: tuple[layouts.Row, ...] = (
    ("self_attention_layer/query/kernel", ("attention.q.weight",), "heads_out"),
    ("self_attention_layer/query/bias", ("attention.q.bias",), "heads_out"),
    ("self_attention_layer/key/kernel", ("attention.k.weight",), "heads_out"),
    ("self_attention_layer/key/bias", ("attention.k.bias",), "heads_out"),
    ("self_attention_layer/value/kernel", ("attention.v.weight",), "heads_out"),
    ("self_attention_layer/value/bias", ("attention.v.bias",), "heads_out"),
    ("self_attention_layer/attention_output/kernel", ("attention.out.weight",), "heads_in"),
    ("self_attention_layer/attention_output/bias", ("attention.out.bias",), "copy"),
    ("self_attention_layer_norm/gamma", ("norm1.weight",), "copy"),
    ("self_attention_layer_norm/beta", ("norm1.bias",), "copy"),
    ("feedforward_intermediate_dense/kernel", ("ffn.in.weight",), "copy"),
    ("feedforward_intermediate_dense/bias", ("ffn.in.bias",), "copy"),
    ("feedforward_output_dense/kernel", ("ffn.out.weight",), "copy"),
    ("feedforward_output_dense/bias", ("ffn.out.bias",), "copy"),
    ("feedforward_layer_norm/gamma", ("norm2.weight",), "copy"),
    ("feedforward_layer_norm/beta", ("norm2.bias",), "copy"),
)
# the pooler's variables: not part of the encoder (left at Keras's initial values)
POOLER: tuple[str, ...] = ("pooled_dense/kernel", "pooled_dense/bias")

_LAYER_NORM_EPS = 1e-12  # fixed by BertBackbone


def table(cfg: EncoderConfig) -> list[layouts.Row]:
    """Every encoder variable of a ``BertBackbone`` with ``cfg``'s sizes (the pooler aside)."""
    return list(EMBEDDINGS) + layouts.stacked(LAYER, cfg.n_layers, "transformer_layer_{i}/")


def backbone_kwargs(cfg: EncoderConfig) -> dict[str, Any]:
    """``keras_hub.models.BertBackbone(**backbone_kwargs(cfg))`` computes ``cfg``'s encoder.

    Raises:
        ValueError: naming the field, expected value and found value, for a config that
            ``BertBackbone`` cannot express (it is a post-norm BERT with learned positions,
            token types, a LayerNorm after the embeddings, GELU's tanh approximation and
            LayerNorm epsilon 1e-12).
    """
    expected = {
        "positional": "learned",
        "embed_norm": True,
        "norm_first": False,
        "final_norm": False,
        "causal": False,
        "activation": "gelu_tanh",
        "layer_norm_eps": _LAYER_NORM_EPS,
        "position_pad_id": None,
        "embed_dim": 0,
        "image_size": 0,
    }
    for field, want in expected.items():
        got = getattr(cfg, field)
        if got != want and not (field == "image_size" and not got):
            why = (
                " (keras-hub's BERT computes GELU's tanh approximation)"
                if field == "activation"
                else ""
            )
            raise ValueError(
                f"keras-hub's BertBackbone needs {field}={want!r}, got {field}={got!r}{why}"
            )
    if cfg.type_vocab_size < 1:
        raise ValueError(
            f"keras-hub's BertBackbone needs type_vocab_size >= 1, got {cfg.type_vocab_size}"
        )
    return {
        "vocabulary_size": cfg.vocab_size,
        "num_layers": cfg.n_layers,
        "num_heads": cfg.n_heads,
        "hidden_dim": cfg.d_model,
        "intermediate_dim": cfg.d_ff,
        "dropout": cfg.dropout,
        "max_sequence_length": cfg.max_len,
        "num_segments": cfg.type_vocab_size,
    }


def to_keras(
    weights: Mapping[str, np.ndarray],
    cfg: EncoderConfig,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """``{variable path: array}`` for every encoder variable of ``BertBackbone``.

    ``shapes`` (the backbone's ``{path: shape}``, pooler included or not) checks each array
    against its variable first: ``layouts.CheckpointError`` naming the tensor otherwise.
    """
    backbone_kwargs(cfg)
    return layouts.to_outside(table(cfg), weights, shapes=shapes, n_heads=cfg.n_heads)


def from_keras(arrays: Mapping[str, np.ndarray], cfg: EncoderConfig) -> dict[str, np.ndarray]:
    """Format-v1 weights from a ``BertBackbone``'s ``{variable path: array}`` (the pooler
    and any other unknown variable ignored): the inverse of :func:`to_keras`."""
    backbone_kwargs(cfg)
    return layouts.from_outside(table(cfg), arrays)
