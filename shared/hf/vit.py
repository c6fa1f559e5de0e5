"""ViT (``model_type`` "vit"): the same stack over image patches, pre-norm with a final
LayerNorm. ``EncoderConfig.image_size``, ``patch_size`` and ``num_channels`` describe the
front end: a Conv2d with kernel = stride = patch size (a matmul over flattened patches,
format (C, P, P, D)), a class token first, learned positions over patches + 1.

config.json: ``hidden_size`` -> d_model, ``num_attention_heads`` -> n_heads,
``intermediate_size`` -> d_ff, ``num_hidden_layers`` -> n_layers, ``hidden_act``,
``layer_norm_eps``, ``hidden_dropout_prob``, ``image_size``, ``patch_size``,
``num_channels``; ``qkv_bias`` must be true. ``save_pretrained`` writes the names below
(``attention.attention.query`` ...). There is no token table: ``vocab_size`` is 1, unused.
Position interpolation to other image sizes is not supported (the size is checked).
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import EXPORTED_ACTIVATIONS, Family, activation, refuse, sizes

__all__ = ["FAMILY"]

DEFAULTS = {  # transformers' ViTConfig
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
}
SIZES = (
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
    ("image_size", "image_size"),
    ("patch_size", "patch_size"),
    ("num_channels", "num_channels"),
)

# Hugging Face name (ViTModel)                      format names                  layout
EMBEDDINGS: tuple[layouts.Row, ...] = (
    ("embeddings.cls_token", ("embeddings.class_token",), "leading_axis"),  # (1, 1, D)
    ("embeddings.position_embeddings", ("embeddings.position.weight",), "leading_axis"),
    ("embeddings.patch_embeddings.projection.weight", ("embeddings.patch.weight",), "patches"),
    ("embeddings.patch_embeddings.projection.bias", ("embeddings.patch.bias",), "copy"),
)
# under "encoder.layer.{i}."                        under "layers.{i}."
LAYER: tuple[layouts.Row, ...] = (
    ("layernorm_before.weight", ("norm1.weight",), "copy"),
    ("layernorm_before.bias", ("norm1.bias",), "copy"),
    ("attention.attention.query.weight", ("attention.q.weight",), "transpose"),
    ("attention.attention.query.bias", ("attention.q.bias",), "copy"),
    ("attention.attention.key.weight", ("attention.k.weight",), "transpose"),
    ("attention.attention.key.bias", ("attention.k.bias",), "copy"),
    ("attention.attention.value.weight", ("attention.v.weight",), "transpose"),
    ("attention.attention.value.bias", ("attention.v.bias",), "copy"),
    ("attention.output.dense.weight", ("attention.out.weight",), "transpose"),
    ("attention.output.dense.bias", ("attention.out.bias",), "copy"),
    ("layernorm_after.weight", ("norm2.weight",), "copy"),
    ("layernorm_after.bias", ("norm2.bias",), "copy"),
    ("intermediate.dense.weight", ("ffn.in.weight",), "transpose"),
    ("intermediate.dense.bias", ("ffn.in.bias",), "copy"),
    ("output.dense.weight", ("ffn.out.weight",), "transpose"),
    ("output.dense.bias", ("ffn.out.bias",), "copy"),
)
FINAL_NORM: tuple[layouts.Row, ...] = (
    ("layernorm.weight", ("final_norm.weight",), "copy"),
    ("layernorm.bias", ("final_norm.bias",), "copy"),
)


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    layers = layouts.stacked(LAYER, cfg.n_layers, "encoder.layer.{i}.")
    return list(EMBEDDINGS) + layers + list(FINAL_NORM)


def _config(data: dict[str, Any]) -> EncoderConfig:
    data = DEFAULTS | data
    if data["qkv_bias"] is not True:
        raise ValueError(f"qkv_bias is {data['qkv_bias']!r}; only true is supported")
    fields = sizes(data, SIZES)
    return EncoderConfig(
        **fields,
        vocab_size=1,  # no token table
        max_len=(fields["image_size"] // fields["patch_size"]) ** 2 + 1,
        dropout=float(data["hidden_dropout_prob"]),
        activation=activation(data, "hidden_act"),
        norm_first=True,
        layer_norm_eps=float(data["layer_norm_eps"]),
        positional="learned",
        type_vocab_size=0,
        embed_norm=False,
        final_norm=True,
    )


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    if not cfg.image_size:
        raise ValueError("ViT cannot express image_size=0: a ViT config needs image_size > 0")
    refuse(cfg, "ViT", norm_first=True, final_norm=True, embed_norm=False, causal=False)
    return {
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "hidden_act": EXPORTED_ACTIVATIONS[cfg.activation],
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.num_channels,
        "qkv_bias": True,
    }


FAMILY = Family(
    name="ViT",
    model_types=("vit",),
    architecture="ViTModel",
    prefix="vit.",
    skipped=("pooler.*", "embeddings.mask_token"),
    config=_config,
    export_config=_export_config,
    table=_table,
)
