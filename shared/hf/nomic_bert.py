"""NomicBERT (``model_type`` "nomic_bert"; Nussbaum et al. 2024, nomic-embed-text): GTE's
post-norm stack (``gte.py``) with SwiGLU (``hidden_act`` "silu"), no bias in any linear,
RoPE base 1000 by default, two token types, ``layer_norm_eps`` 1e-12. config.json fields as
GTE's; ``NomicBertForMaskedLM`` keeps the body under ``nomic_bert.``.

Tensor names as nomic-embed checkpoints and ``save_pretrained`` write them (transformers
renames them on load): ``emb_ln`` after the embeddings, ``encoder.layers.{i}.attn.Wqkv``
(q | k | v by rows), ``attn.out_proj``, ``norm1`` (after attention), ``mlp.fc11`` the
linear half (up: ffn.in), ``mlp.fc12`` the activated half (gate: ffn.gate), ``mlp.fc2``,
``norm2``.
"""

from __future__ import annotations

from shared import layouts
from shared.config import EncoderConfig
from shared.hf.family import Family, linear
from shared.hf.gte import bert_rope_config, bert_rope_export, bert_rope_table, packed

__all__ = ["FAMILY"]

DEFAULTS = {
    "hidden_act": "silu",
    "hidden_dropout_prob": 0.0,
    "max_position_embeddings": 2048,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "rope_theta": 1000.0,
}
BIASES = {"attention_bias": False, "mlp_bias": False, "mlp_out_bias": False}


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    qkv = ("attention.q", "attention.k", "attention.v")
    layer = (
        *packed("attn.Wqkv", qkv, cfg.attention_bias),
        *linear("attn.out_proj", "attention.out", cfg.attention_bias),
        ("norm1.weight", ("norm1.weight",), "copy"),
        ("norm1.bias", ("norm1.bias",), "copy"),
        *linear("mlp.fc11", "ffn.in", cfg.mlp_bias),
        *linear("mlp.fc12", "ffn.gate", cfg.mlp_bias),
        *linear("mlp.fc2", "ffn.out", cfg.mlp_out_bias),
        ("norm2.weight", ("norm2.weight",), "copy"),
        ("norm2.bias", ("norm2.bias",), "copy"),
    )
    return bert_rope_table(cfg, embedding_norm="emb_ln", layer=layer, layers="encoder.layers.{i}.")


FAMILY = Family(
    name="NomicBERT",
    model_types=("nomic_bert",),
    architecture="NomicBertModel",
    prefix="nomic_bert.",
    skipped=("pooler.*", "rotary_emb.*"),
    config=lambda data: bert_rope_config(data, DEFAULTS, **BIASES),
    export_config=lambda cfg: bert_rope_export(cfg, "NomicBERT", **BIASES),
    table=_table,
)
