"""DistilBERT (``model_type`` "distilbert"): BERT without token types, with its own names.

config.json: ``dim`` -> d_model, ``n_heads``, ``hidden_dim`` -> d_ff, ``n_layers``,
``max_position_embeddings`` -> max_len, ``activation``, ``dropout``. The LayerNorm eps is
fixed at 1e-12 (not in its config). ``sinusoidal_pos_embds`` stores the sinusoid as
``position_embeddings.weight``, so positions are always read as a learned table.
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import EXPORTED_ACTIVATIONS, Family, activation, refuse, sizes

__all__ = ["FAMILY"]

EPS = 1e-12  # nn.LayerNorm(dim, eps=1e-12) in transformers' DistilBERT, whatever the config
DEFAULTS = {"activation": "gelu", "dropout": 0.1}
SIZES = (
    ("vocab_size", "vocab_size"),
    ("dim", "d_model"),
    ("n_heads", "n_heads"),
    ("hidden_dim", "d_ff"),
    ("n_layers", "n_layers"),
    ("max_position_embeddings", "max_len"),
)

# Hugging Face name (DistilBertModel)            format names                    layout
EMBEDDINGS: tuple[layouts.Row, ...] = (
    ("embeddings.word_embeddings.weight", ("embeddings.token.weight",), "copy"),
    ("embeddings.position_embeddings.weight", ("embeddings.position.weight",), "copy"),
    ("embeddings.LayerNorm.weight", ("embeddings.norm.weight",), "copy"),
    ("embeddings.LayerNorm.bias", ("embeddings.norm.bias",), "copy"),
)
# under "transformer.layer.{i}."                 under "layers.{i}."
LAYER: tuple[layouts.Row, ...] = (
    ("attention.q_lin.weight", ("attention.q.weight",), "transpose"),
    ("attention.q_lin.bias", ("attention.q.bias",), "copy"),
    ("attention.k_lin.weight", ("attention.k.weight",), "transpose"),
    ("attention.k_lin.bias", ("attention.k.bias",), "copy"),
    ("attention.v_lin.weight", ("attention.v.weight",), "transpose"),
    ("attention.v_lin.bias", ("attention.v.bias",), "copy"),
    ("attention.out_lin.weight", ("attention.out.weight",), "transpose"),
    ("attention.out_lin.bias", ("attention.out.bias",), "copy"),
    ("sa_layer_norm.weight", ("norm1.weight",), "copy"),
    ("sa_layer_norm.bias", ("norm1.bias",), "copy"),
    ("ffn.lin1.weight", ("ffn.in.weight",), "transpose"),
    ("ffn.lin1.bias", ("ffn.in.bias",), "copy"),
    ("ffn.lin2.weight", ("ffn.out.weight",), "transpose"),
    ("ffn.lin2.bias", ("ffn.out.bias",), "copy"),
    ("output_layer_norm.weight", ("norm2.weight",), "copy"),
    ("output_layer_norm.bias", ("norm2.bias",), "copy"),
)


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    return list(EMBEDDINGS) + layouts.stacked(LAYER, cfg.n_layers, "transformer.layer.{i}.")


def _config(data: dict[str, Any]) -> EncoderConfig:
    data = DEFAULTS | data
    return EncoderConfig(
        **sizes(data, SIZES),
        dropout=float(data["dropout"]),
        activation=activation(data, "activation"),
        norm_first=False,
        layer_norm_eps=EPS,
        positional="learned",  # the sinusoidal table, if any, is stored like a learned one
        type_vocab_size=0,
        embed_norm=True,
        final_norm=False,
    )


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    refuse(
        cfg,
        "DistilBERT",
        positional="learned",
        type_vocab_size=0,
        embed_norm=True,
        norm_first=False,
        final_norm=False,
        layer_norm_eps=EPS,
        causal=False,
        position_pad_id=None,
        embed_dim=0,
    )
    if cfg.activation not in ("gelu", "relu"):
        raise ValueError(
            f"DistilBERT cannot express activation={cfg.activation!r}: its config takes "
            "'gelu' or 'relu'"
        )
    return {
        "vocab_size": cfg.vocab_size,
        "dim": cfg.d_model,
        "n_heads": cfg.n_heads,
        "hidden_dim": cfg.d_ff,
        "n_layers": cfg.n_layers,
        "max_position_embeddings": cfg.max_len,
        "activation": EXPORTED_ACTIVATIONS[cfg.activation],
        "dropout": cfg.dropout,
        "attention_dropout": cfg.dropout,
        "sinusoidal_pos_embds": False,
    }


FAMILY = Family(
    name="DistilBERT",
    model_types=("distilbert",),
    architecture="DistilBertModel",
    prefix="distilbert.",
    skipped=("embeddings.position_ids",),
    config=_config,
    export_config=_export_config,
    table=_table,
)
