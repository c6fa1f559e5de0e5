"""Llama (``model_type`` "llama"; Touvron et al. 2023): causal, pre-norm with RMSNorm, RoPE
on q and k, grouped-query attention, SwiGLU feed-forward, a final RMSNorm ``norm``.
EuroBERT (``eurobert.py``, the same stack attending both ways) and Qwen3 (``qwen3.py``,
plus per-head q/k norms) reuse these names.

config.json -> EncoderConfig: ``hidden_size`` -> d_model, ``num_attention_heads`` ->
n_heads, ``num_key_value_heads`` -> n_kv_heads, ``head_dim`` (when it is not
hidden_size / heads) -> attn_head_dim, ``intermediate_size`` -> d_ff,
``num_hidden_layers`` -> n_layers, ``max_position_embeddings`` -> max_len, ``rms_norm_eps``
-> layer_norm_eps, ``hidden_act`` ("silu": SwiGLU), ``attention_bias``, ``mlp_bias``,
``rope_parameters`` (only ``rope_type`` "default": scaled RoPE is refused by name).
There is no dropout on embeddings or sub-layer outputs: dropout is read as 0 and not
written (it changes training only).
``gate_proj`` is the activated half of the GLU (ffn.gate), ``up_proj`` the linear half
(ffn.in), ``down_proj`` the output (ffn.out). Positions are 0..T-1 unless ``position_ids``
are passed: with left padding, pass them.
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

__all__ = ["FAMILY", "decoder_config", "decoder_table", "export_decoder_config"]

SIZES = (  # config.json field -> EncoderConfig field; required
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
)
DEFAULTS = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "mlp_bias": False,
    "max_position_embeddings": 2048,
    "pretraining_tp": 1,
}


def decoder_table(cfg: EncoderConfig) -> list[layouts.Row]:
    """(HF name, format names, layout) of a Llama-shaped body (``LlamaModel`` names)."""
    attention = (
        linear("self_attn.q_proj", "attention.q", cfg.attention_bias)
        + linear("self_attn.k_proj", "attention.k", cfg.attention_bias)
        + linear("self_attn.v_proj", "attention.v", cfg.attention_bias)
        + linear("self_attn.o_proj", "attention.out", cfg.attention_bias)
    )
    if cfg.qk_norm:
        attention += (
            ("self_attn.q_norm.weight", ("attention.q_norm.weight",), "copy"),
            ("self_attn.k_norm.weight", ("attention.k_norm.weight",), "copy"),
        )
    layer = (
        ("input_layernorm.weight", ("norm1.weight",), "copy"),
        *attention,
        ("post_attention_layernorm.weight", ("norm2.weight",), "copy"),
        *linear("mlp.gate_proj", "ffn.gate", cfg.mlp_bias),
        *linear("mlp.up_proj", "ffn.in", cfg.mlp_bias),
        *linear("mlp.down_proj", "ffn.out", cfg.mlp_out_bias),
    )
    return [
        ("embed_tokens.weight", ("embeddings.token.weight",), "copy"),
        *layouts.stacked(layer, cfg.n_layers, "layers.{i}."),
        ("norm.weight", ("final_norm.weight",), "copy"),
    ]


def decoder_config(
    data: dict[str, Any], *, causal: bool, qk_norm: bool = False, defaults: dict | None = None
) -> EncoderConfig:
    """config.json of a Llama-shaped model -> EncoderConfig."""
    data = DEFAULTS | (defaults or {}) | data
    if data["pretraining_tp"] != 1:
        raise ValueError(
            f"pretraining_tp is {data['pretraining_tp']!r}; only 1 is supported (it splits "
            "the projections into slices)"
        )
    fields = sizes(data, SIZES)
    d, h = fields["d_model"], fields["n_heads"]
    head_dim = data.get("head_dim") or d // h
    if data.get("hidden_act") != "silu":
        raise ValueError(f"hidden_act is {data.get('hidden_act')!r}; expected 'silu' (SwiGLU)")
    return EncoderConfig(
        **fields,
        max_len=data["max_position_embeddings"],
        dropout=0.0,  # no dropout on embeddings or sub-layer outputs (attention's is not ours)
        activation=activation(data, "hidden_act"),
        norm_first=True,
        layer_norm_eps=float(data["rms_norm_eps"]),
        positional="rope",
        type_vocab_size=0,
        embed_norm=False,
        final_norm=True,
        causal=causal,
        n_kv_heads=data.get("num_key_value_heads") or h,
        attn_head_dim=0 if head_dim * h == d else head_dim,
        attention_bias=bool(data["attention_bias"]),
        qk_norm=qk_norm,
        rope_theta=rope_theta(rope_block(data, 10000.0)),
        gated_ffn=True,
        mlp_bias=bool(data["mlp_bias"]),
        mlp_out_bias=bool(data["mlp_bias"]),
        norm="rms_norm",
        norm_bias=False,
    )


def export_decoder_config(
    cfg: EncoderConfig, family: str, *, causal: bool, qk_norm: bool = False
) -> dict[str, Any]:
    """EncoderConfig -> a Llama-shaped config.json, or a ValueError naming the field that
    the family cannot express."""
    refuse(
        cfg,
        family,
        causal=causal,
        qk_norm=qk_norm,
        positional="rope",
        norm="rms_norm",
        norm_first=True,
        final_norm=True,
        embed_norm=False,
        gated_ffn=True,
        activation="silu",
        type_vocab_size=0,
        position_pad_id=None,
        embed_dim=0,
        sliding_window=None,
        layer_types=None,
        rope_interleaved=False,
        first_attn_norm=True,
        mlp_out_bias=cfg.mlp_bias,
    )
    config = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "max_position_embeddings": cfg.max_len,
        "hidden_act": EXPORTED_ACTIVATIONS[cfg.activation],
        "rms_norm_eps": cfg.layer_norm_eps,
        "attention_bias": cfg.attention_bias,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": False,
        # token ids are the tokenizer's, not the encoder's: none within a small vocabulary
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if not qk_norm:
        config["mlp_bias"] = cfg.mlp_bias
    elif cfg.mlp_bias:
        raise ValueError(f"{family} cannot express mlp_bias=True: a {family} config needs False")
    return config


FAMILY = Family(
    name="Llama",
    model_types=("llama",),
    architecture="LlamaModel",
    prefix="model.",
    skipped=("lm_head.*", "rotary_emb.inv_freq", "layers.*.self_attn.rotary_emb.inv_freq"),
    config=lambda data: decoder_config(data, causal=True),
    export_config=lambda cfg: export_decoder_config(cfg, "Llama", causal=True),
    table=decoder_table,
)
