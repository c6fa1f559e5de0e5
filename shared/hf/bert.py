"""BERT (``model_type`` "bert"): learned positions, token types, a LayerNorm after the
embedding sum, post-norm layers. RoBERTa and ELECTRA reuse its names (``roberta.py``,
``electra.py``).

config.json -> EncoderConfig: ``hidden_size`` -> d_model, ``num_attention_heads`` ->
n_heads, ``intermediate_size`` -> d_ff, ``num_hidden_layers`` -> n_layers,
``max_position_embeddings`` -> max_len, ``type_vocab_size``, ``layer_norm_eps`` (1e-12 in
BERT, not PyTorch's 1e-5), ``hidden_act``, ``hidden_dropout_prob`` -> dropout. BERT also
drops attention weights (``attention_probs_dropout_prob``); this project does not, which
changes training only, never inference. Linear weights are (out, in): transposed.
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import EXPORTED_ACTIVATIONS, Family, activation, refuse, sizes

__all__ = ["FAMILY", "encoder_config", "export_encoder_config", "table"]

# Defaults of transformers' BertConfig, for fields older config.json files leave out.
DEFAULTS = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
}

SIZES = (  # config.json field -> EncoderConfig field; required
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
    ("max_position_embeddings", "max_len"),
)

# Hugging Face name (BertModel)                 format names                    layout
EMBEDDINGS: tuple[layouts.Row, ...] = (
    ("embeddings.word_embeddings.weight", ("embeddings.token.weight",), "copy"),
    ("embeddings.position_embeddings.weight", ("embeddings.position.weight",), "copy"),
)
TOKEN_TYPES: tuple[layouts.Row, ...] = (
    ("embeddings.token_type_embeddings.weight", ("embeddings.token_type.weight",), "copy"),
)
EMBEDDING_NORM: tuple[layouts.Row, ...] = (
    ("embeddings.LayerNorm.weight", ("embeddings.norm.weight",), "copy"),
    ("embeddings.LayerNorm.bias", ("embeddings.norm.bias",), "copy"),
)
# under "encoder.layer.{i}."                    under "layers.{i}."
LAYER: tuple[layouts.Row, ...] = (
    ("attention.self.query.weight", ("attention.q.weight",), "transpose"),
    ("attention.self.query.bias", ("attention.q.bias",), "copy"),
    ("attention.self.key.weight", ("attention.k.weight",), "transpose"),
    ("attention.self.key.bias", ("attention.k.bias",), "copy"),
    ("attention.self.value.weight", ("attention.v.weight",), "transpose"),
    ("attention.self.value.bias", ("attention.v.bias",), "copy"),
    ("attention.output.dense.weight", ("attention.out.weight",), "transpose"),
    ("attention.output.dense.bias", ("attention.out.bias",), "copy"),
    ("attention.output.LayerNorm.weight", ("norm1.weight",), "copy"),
    ("attention.output.LayerNorm.bias", ("norm1.bias",), "copy"),
    ("intermediate.dense.weight", ("ffn.in.weight",), "transpose"),
    ("intermediate.dense.bias", ("ffn.in.bias",), "copy"),
    ("output.dense.weight", ("ffn.out.weight",), "transpose"),
    ("output.dense.bias", ("ffn.out.bias",), "copy"),
    ("output.LayerNorm.weight", ("norm2.weight",), "copy"),
    ("output.LayerNorm.bias", ("norm2.bias",), "copy"),
)


def table(cfg: EncoderConfig) -> list[layouts.Row]:
    """Every tensor of a BertModel with ``cfg``'s sizes, in the layout vocabulary."""
    rows = list(EMBEDDINGS) + list(TOKEN_TYPES if cfg.type_vocab_size else ())
    rows += list(EMBEDDING_NORM)
    return rows + layouts.stacked(LAYER, cfg.n_layers, "encoder.layer.{i}.")


def encoder_config(data: dict[str, Any], name: str, **fields: Any) -> EncoderConfig:
    """A BERT-shaped config.json -> EncoderConfig (``fields`` add or override)."""
    data = DEFAULTS | data
    position = data["position_embedding_type"]
    if position != "absolute":
        raise ValueError(
            f"position_embedding_type is {position!r}; only 'absolute' (learned positions "
            "added to the embeddings) is supported, not relative position scores"
        )
    if data.get("is_decoder") or data.get("add_cross_attention"):
        raise ValueError(f"a {name} decoder (is_decoder / add_cross_attention) is not an encoder")
    return EncoderConfig(
        **sizes(data, SIZES),
        dropout=float(data["hidden_dropout_prob"]),
        activation=activation(data, "hidden_act"),
        norm_first=False,  # post-norm
        layer_norm_eps=float(data["layer_norm_eps"]),
        positional="learned",
        type_vocab_size=data["type_vocab_size"],
        embed_norm=True,
        final_norm=False,
        **fields,
    )


def export_encoder_config(cfg: EncoderConfig, name: str, **needed: Any) -> dict[str, Any]:
    """EncoderConfig -> a BERT-shaped config.json, refusing what ``name`` cannot express."""
    refuse(
        cfg,
        name,
        positional="learned",
        embed_norm=True,
        norm_first=False,
        final_norm=False,
        causal=False,
        **({"position_pad_id": None, "embed_dim": 0} | needed),
    )
    if cfg.type_vocab_size < 1:
        raise ValueError(
            f"{name} cannot express type_vocab_size=0: it always adds a token-type row"
        )
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": EXPORTED_ACTIVATIONS[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "position_embedding_type": "absolute",
    }


FAMILY = Family(
    name="BERT",
    model_types=("bert",),
    architecture="BertModel",
    prefix="bert.",
    skipped=(
        "embeddings.position_ids",  # a buffer 0..max_len-1 that older transformers saved
        "embeddings.token_type_ids",  # a buffer of zeros
        "pooler.*",  # BertPooler, tanh(W h_[CLS] + b): a head on top of the encoder
        "cls.*",  # the masked-LM and next-sentence heads, when saved without the prefix
    ),
    config=lambda data: encoder_config(data, "BERT"),
    export_config=lambda cfg: export_encoder_config(cfg, "BERT"),
    table=table,
)
