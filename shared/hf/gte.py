"""GTE (``model_type`` "gte"; Alibaba's gte-v1.5 / gte-multilingual, Zhang et al. 2024) and
NomicBERT (``nomic_bert.py``): BERT's post-norm stack with RoPE instead of learned
positions, a gated feed-forward, token types (when ``type_vocab_size`` > 0) and a
LayerNorm after the embeddings.

GTE: GeGLU (``hidden_act`` "gelu") whose packed ``up_gate_proj`` has no bias while
``down_proj`` has one (mlp_bias=False, mlp_out_bias=True), biases on q, k, v and out,
``rope_parameters`` (default base 160000), ``layer_norm_eps`` (1e-12).
config.json -> EncoderConfig as BERT's (``hidden_size`` -> d_model ...). Task models keep
the body under ``gte.``, as transformers' ``GteFor...`` classes save it (Alibaba's own
remote-code checkpoints use ``new.``, which transformers renames on load; read them
through ``GteModel.from_pretrained(...).save_pretrained(...)``).
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import (
    EXPORTED_ACTIVATIONS,
    Family,
    activation,
    linear,
    refuse,
    rope_block,
    rope_theta,
    sizes,
)

__all__ = ["FAMILY", "bert_rope_config", "bert_rope_export", "bert_rope_table", "packed"]

SIZES = (  # config.json field -> EncoderConfig field; required
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
)


_QKV = ("attention.q", "attention.k", "attention.v")


def packed(outside: str, ours: tuple[str, ...], bias: bool) -> tuple[layouts.Row, ...]:
    """A linear packing several of ours by rows (weight (n*out, in)), and its bias if any."""
    rows: tuple[layouts.Row, ...] = (
        (f"{outside}.weight", tuple(f"{n}.weight" for n in ours), "fused_columns_transposed"),
    )
    bias_row = (f"{outside}.bias", tuple(f"{n}.bias" for n in ours), "fused_columns")
    return rows + ((bias_row,) if bias else ())


def _layer_norm(outside: str, ours: str) -> tuple[layouts.Row, ...]:
    return (
        (f"{outside}.weight", (f"{ours}.weight",), "copy"),
        (f"{outside}.bias", (f"{ours}.bias",), "copy"),
    )


def bert_rope_table(
    cfg: EncoderConfig, *, embedding_norm: str, layer: tuple[layouts.Row, ...], layers: str
) -> list[layouts.Row]:
    """(HF name, format names, layout) of a GTE / NomicBERT body: the embeddings, then
    ``layer``'s rows under ``layers`` ("encoder.layer.{i}.")."""
    rows = [("embeddings.word_embeddings.weight", ("embeddings.token.weight",), "copy")]
    if cfg.type_vocab_size:
        rows.append(
            ("embeddings.token_type_embeddings.weight", ("embeddings.token_type.weight",), "copy")
        )
    rows += _layer_norm(embedding_norm, "embeddings.norm")
    return rows + layouts.stacked(layer, cfg.n_layers, layers)


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    """GTE's names as its checkpoints and ``save_pretrained`` write them (transformers renames
    them on load): q | k | v packed by rows in ``qkv_proj``; ``up_gate_proj`` (2F, D) packs
    the linear half FIRST (up: ffn.in) and the activated half second (gate: ffn.gate)."""
    layer = (
        *packed("attention.qkv_proj", _QKV, cfg.attention_bias),
        *linear("attention.o_proj", "attention.out", cfg.attention_bias),
        *_layer_norm("attn_ln", "norm1"),
        *packed("mlp.up_gate_proj", ("ffn.in", "ffn.gate"), cfg.mlp_bias),
        *linear("mlp.down_proj", "ffn.out", cfg.mlp_out_bias),
        *_layer_norm("mlp_ln", "norm2"),
    )
    return bert_rope_table(
        cfg, embedding_norm="embeddings.LayerNorm", layer=layer, layers="encoder.layer.{i}."
    )


def bert_rope_config(data: dict[str, Any], defaults: dict[str, Any], **biases) -> EncoderConfig:
    """config.json of a GTE / NomicBERT model -> EncoderConfig (``biases``: its fixed ones)."""
    data = defaults | data
    fields = sizes(data, SIZES)
    d, h = fields["d_model"], fields["n_heads"]
    head_dim = data.get("head_dim") or d // h
    if head_dim * h != d:
        raise ValueError(f"head_dim is {head_dim}; expected hidden_size / heads = {d // h}")
    return EncoderConfig(
        **fields,
        max_len=data["max_position_embeddings"],
        dropout=float(data["hidden_dropout_prob"]),
        activation=activation(data, "hidden_act"),
        norm_first=False,
        layer_norm_eps=float(data["layer_norm_eps"]),
        positional="rope",
        type_vocab_size=data["type_vocab_size"],
        embed_norm=True,
        final_norm=False,
        rope_theta=rope_theta(rope_block(data, defaults["rope_theta"])),
        gated_ffn=True,
        **biases,
    )


def bert_rope_export(cfg: EncoderConfig, family: str, **biases) -> dict[str, Any]:
    """EncoderConfig -> a GTE / NomicBERT config.json, or a ValueError naming the field."""
    refuse(
        cfg,
        family,
        causal=False,
        positional="rope",
        norm="layer_norm",
        norm_bias=True,
        norm_first=False,
        embed_norm=True,
        final_norm=False,
        gated_ffn=True,
        position_pad_id=None,
        embed_dim=0,
        n_kv_heads=0,
        attn_head_dim=0,
        qk_norm=False,
        sliding_window=None,
        layer_types=None,
        rope_interleaved=False,
        **biases,
    )
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": EXPORTED_ACTIVATIONS[cfg.activation],
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": 0.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "pad_token_id": 0,
    }


DEFAULTS = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "max_position_embeddings": 8192,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-12,
    "rope_theta": 160000.0,
}
BIASES = {"attention_bias": True, "mlp_bias": False, "mlp_out_bias": True}

FAMILY = Family(
    name="GTE",
    model_types=("gte",),
    architecture="GteModel",
    prefix="gte.",
    skipped=("pooler.*", "rotary_emb.*"),
    config=lambda data: bert_rope_config(data, DEFAULTS, **BIASES),
    export_config=lambda cfg: bert_rope_export(cfg, "GTE", **BIASES),
    table=_table,
)
