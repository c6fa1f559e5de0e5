"""ModernBERT (``model_type`` "modernbert"; Warner et al. 2024), and mmBERT, which shares it:
pre-norm with LayerNorms without bias, a LayerNorm after the token embeddings and a final
one, none before layer 0's attention (``first_attn_norm=False``), RoPE with one base for
global layers and another for local ones, sliding-window attention in the local layers,
GeGLU, no biases in the linears.

config.json -> EncoderConfig: ``hidden_size`` -> d_model, ``num_attention_heads`` ->
n_heads, ``intermediate_size`` -> d_ff, ``num_hidden_layers`` -> n_layers,
``max_position_embeddings`` -> max_len, ``norm_eps`` -> layer_norm_eps, ``norm_bias``,
``attention_bias``, ``mlp_bias``, ``hidden_activation`` (the GLU's activation).
``layer_types`` ("full_attention" / "sliding_attention", default: global every
``global_attn_every_n_layers`` = 3 layers, from layer 0) -> layer_types; ``local_attention``
(the window's total width, 128) -> sliding_window = local_attention // 2: a local query
sees keys |i - j| <= 64, 129 keys. ``rope_parameters`` {"full_attention": {"rope_theta":
160000}, "sliding_attention": {"rope_theta": 10000}} (or the older ``global_rope_theta``,
``local_rope_theta``) -> rope_theta, rope_local_theta.

Packed tensors: ``attn.Wqkv.weight`` (3D, D) is q | k | v by rows; ``mlp.Wi.weight`` (2F, D)
is two halves by rows, the FIRST (rows 0..F-1) activated (our ffn.gate), the second the
linear half (ffn.in): ``Wo(act(first) * second)``.
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import (
    EXPORTED_ACTIVATIONS,
    Family,
    activation,
    check_rope_scaling,
    linear,
    refuse,
    rope_theta,
    sizes,
)

__all__ = ["FAMILY"]

SIZES = (  # config.json field -> EncoderConfig field; required
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
)
DEFAULTS = {
    "hidden_activation": "gelu",
    "max_position_embeddings": 8192,
    "norm_eps": 1e-5,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "local_attention": 128,
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
}
_QKV = ("attention.q", "attention.k", "attention.v")


def _norm(outside: str, ours: str, bias: bool) -> tuple[layouts.Row, ...]:
    rows: tuple[layouts.Row, ...] = ((f"{outside}.weight", (f"{ours}.weight",), "copy"),)
    return rows + (((f"{outside}.bias", (f"{ours}.bias",), "copy"),) if bias else ())


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    rows = [("embeddings.tok_embeddings.weight", ("embeddings.token.weight",), "copy")]
    rows += _norm("embeddings.norm", "embeddings.norm", cfg.norm_bias)
    packed: list[layouts.Row] = [
        ("attn.Wqkv.weight", tuple(f"{n}.weight" for n in _QKV), "fused_columns_transposed"),
        ("mlp.Wi.weight", ("ffn.gate.weight", "ffn.in.weight"), "fused_columns_transposed"),
    ]
    if cfg.attention_bias:
        packed.append(("attn.Wqkv.bias", tuple(f"{n}.bias" for n in _QKV), "fused_columns"))
    if cfg.mlp_bias:
        packed.append(("mlp.Wi.bias", ("ffn.gate.bias", "ffn.in.bias"), "fused_columns"))
    layer = (
        *packed,
        *linear("attn.Wo", "attention.out", cfg.attention_bias),
        *_norm("mlp_norm", "norm2", cfg.norm_bias),
        *linear("mlp.Wo", "ffn.out", cfg.mlp_out_bias),
    )
    for i in range(cfg.n_layers):
        attn_norm = _norm("attn_norm", "norm1", cfg.norm_bias) if i else ()  # none in layer 0
        rows += layouts.prefixed((*attn_norm, *layer), f"layers.{i}.", f"layers.{i}.")
    return rows + list(_norm("final_norm", "final_norm", cfg.norm_bias))


def _rope_thetas(data: dict[str, Any]) -> tuple[float, float]:
    check_rope_scaling(data)
    params = data.get("rope_parameters")
    if params is None:
        return float(data["global_rope_theta"]), float(data["local_rope_theta"])
    return (
        rope_theta(params.get("full_attention"), "rope_parameters['full_attention']"),
        rope_theta(params.get("sliding_attention"), "rope_parameters['sliding_attention']"),
    )


def _config(data: dict[str, Any]) -> EncoderConfig:
    data = DEFAULTS | data
    fields = sizes(data, SIZES)
    every = data["global_attn_every_n_layers"]
    layer_types = data.get("layer_types") or [
        "sliding_attention" if i % every else "full_attention" for i in range(fields["n_layers"])
    ]
    global_theta, local_theta = _rope_thetas(data)
    sliding = "sliding_attention" in layer_types
    return EncoderConfig(
        **fields,
        max_len=data["max_position_embeddings"],
        dropout=0.0,  # ModernBERT's dropouts are all 0 in its checkpoints; read as 0
        activation=activation(data, "hidden_activation"),
        norm_first=True,
        layer_norm_eps=float(data["norm_eps"]),
        positional="rope",
        type_vocab_size=0,
        embed_norm=True,
        final_norm=True,
        attention_bias=bool(data["attention_bias"]),
        sliding_window=data["local_attention"] // 2 if sliding else None,
        layer_types=tuple(layer_types),
        rope_theta=global_theta,
        rope_local_theta=local_theta if sliding else None,
        gated_ffn=True,
        mlp_bias=bool(data["mlp_bias"]),
        mlp_out_bias=bool(data["mlp_bias"]),
        norm="layer_norm",
        norm_bias=bool(data["norm_bias"]),
        first_attn_norm=False,
    )


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    refuse(
        cfg,
        "ModernBERT",
        causal=False,
        positional="rope",
        norm="layer_norm",
        norm_first=True,
        embed_norm=True,
        final_norm=True,
        first_attn_norm=False,
        gated_ffn=True,
        type_vocab_size=0,
        position_pad_id=None,
        embed_dim=0,
        n_kv_heads=0,
        attn_head_dim=0,
        qk_norm=False,
        rope_interleaved=False,
        mlp_out_bias=cfg.mlp_bias,
    )
    kinds = cfg.layer_kinds
    local = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "max_position_embeddings": cfg.max_len,
        "hidden_activation": EXPORTED_ACTIVATIONS[cfg.activation],
        "norm_eps": cfg.layer_norm_eps,
        "norm_bias": cfg.norm_bias,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "layer_types": list(kinds),
        "local_attention": 2 * (cfg.sliding_window or 64),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        },
        "embedding_dropout": 0.0,
        "mlp_dropout": 0.0,
        "attention_dropout": 0.0,
        "pad_token_id": 0,
        "bos_token_id": None,
        "eos_token_id": None,
        "cls_token_id": None,
        "sep_token_id": None,
    }


FAMILY = Family(
    name="ModernBERT",
    model_types=("modernbert",),
    architecture="ModernBertModel",
    prefix="model.",
    skipped=("rotary_emb.*",),
    config=_config,
    export_config=_export_config,
    table=_table,
)
