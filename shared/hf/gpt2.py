"""GPT-2 (``model_type`` "gpt2"): the same stack, causal (``EncoderConfig.causal``), pre-norm
with a final LayerNorm ``ln_f``, learned positions, no embedding LayerNorm.

config.json: ``n_embd`` -> d_model, ``n_head`` -> n_heads, ``n_inner`` -> d_ff (None means
4 * n_embd), ``n_layer`` -> n_layers, ``n_positions`` -> max_len, ``activation_function``
("gelu_new", the default, is our gelu_tanh), ``layer_norm_epsilon``, ``resid_pdrop``.
``Conv1D`` weights are already (in, out); ``c_attn`` packs q|k|v by columns (D, 3D).
Positions are 0..T-1 whatever the mask: right padding is safe, left padding shifts them.
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import EXPORTED_ACTIVATIONS, Family, activation, refuse, sizes

__all__ = ["FAMILY"]

DEFAULTS = {
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "resid_pdrop": 0.1,
    "n_inner": None,
    "scale_attn_weights": True,
}
# Flags that change the attention's math: refused, saying which (value that is the default).
CHANGES_THE_MATH = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}
SIZES = (
    ("vocab_size", "vocab_size"),
    ("n_embd", "d_model"),
    ("n_head", "n_heads"),
    ("n_layer", "n_layers"),
    ("n_positions", "max_len"),
)

# Hugging Face name (GPT2Model)        format names                                     layout
EMBEDDINGS: tuple[layouts.Row, ...] = (
    ("wte.weight", ("embeddings.token.weight",), "copy"),
    ("wpe.weight", ("embeddings.position.weight",), "copy"),
)
_QKV = ("attention.q", "attention.k", "attention.v")
# under "h.{i}."                       under "layers.{i}."
LAYER: tuple[layouts.Row, ...] = (
    ("ln_1.weight", ("norm1.weight",), "copy"),
    ("ln_1.bias", ("norm1.bias",), "copy"),
    ("attn.c_attn.weight", tuple(f"{n}.weight" for n in _QKV), "fused_columns"),
    ("attn.c_attn.bias", tuple(f"{n}.bias" for n in _QKV), "fused_columns"),
    ("attn.c_proj.weight", ("attention.out.weight",), "copy"),
    ("attn.c_proj.bias", ("attention.out.bias",), "copy"),
    ("ln_2.weight", ("norm2.weight",), "copy"),
    ("ln_2.bias", ("norm2.bias",), "copy"),
    ("mlp.c_fc.weight", ("ffn.in.weight",), "copy"),
    ("mlp.c_fc.bias", ("ffn.in.bias",), "copy"),
    ("mlp.c_proj.weight", ("ffn.out.weight",), "copy"),
    ("mlp.c_proj.bias", ("ffn.out.bias",), "copy"),
)
FINAL_NORM: tuple[layouts.Row, ...] = (
    ("ln_f.weight", ("final_norm.weight",), "copy"),
    ("ln_f.bias", ("final_norm.bias",), "copy"),
)


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    return list(EMBEDDINGS) + layouts.stacked(LAYER, cfg.n_layers, "h.{i}.") + list(FINAL_NORM)


def _config(data: dict[str, Any]) -> EncoderConfig:
    data = DEFAULTS | data
    for flag, default in CHANGES_THE_MATH.items():
        if data.get(flag, default) != default:
            raise ValueError(
                f"{flag} is {data[flag]!r}; only {default!r} is supported (it changes the "
                "attention's math)"
            )
    fields = sizes(data, SIZES)
    return EncoderConfig(
        **fields,
        d_ff=data["n_inner"] or 4 * fields["d_model"],
        dropout=float(data["resid_pdrop"]),
        activation=activation(data, "activation_function"),
        norm_first=True,
        layer_norm_eps=float(data["layer_norm_epsilon"]),
        positional="learned",
        type_vocab_size=0,
        embed_norm=False,
        final_norm=True,
        causal=True,
    )


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    refuse(
        cfg,
        "GPT-2",
        causal=True,
        norm_first=True,
        final_norm=True,
        embed_norm=False,
        positional="learned",
        type_vocab_size=0,
        position_pad_id=None,
        embed_dim=0,
    )
    return {
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_layer": cfg.n_layers,
        "n_positions": cfg.max_len,
        "activation_function": EXPORTED_ACTIVATIONS[cfg.activation],
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
    }


FAMILY = Family(
    name="GPT-2",
    model_types=("gpt2",),
    architecture="GPT2Model",
    prefix="transformer.",
    skipped=(
        "h.*.attn.bias",  # the causal-mask buffer older transformers saved
        "h.*.attn.masked_bias",
        "lm_head.*",  # tied to wte
    ),
    config=_config,
    export_config=_export_config,
    table=_table,
)
