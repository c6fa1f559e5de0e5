"""EuroBERT (``model_type`` "eurobert"; Boizard et al. 2025): Llama's stack attending both
ways (not causal): RMSNorm pre-norm, RoPE, grouped-query attention, SwiGLU, a final
``norm``. config.json and tensor names as Llama's (``llama.py``); ``EuroBertForMaskedLM``
keeps the body under ``model.``.
"""

from __future__ import annotations

from shared.hf.family import Family
from shared.hf.llama import decoder_config, decoder_table, export_decoder_config

__all__ = ["FAMILY"]

FAMILY = Family(
    name="EuroBERT",
    model_types=("eurobert",),
    architecture="EuroBertModel",
    prefix="model.",
    skipped=("lm_head.*", "rotary_emb.inv_freq"),
    config=lambda data: decoder_config(
        data, causal=False, defaults={"rms_norm_eps": 1e-5, "max_position_embeddings": 8192}
    ),
    export_config=lambda cfg: export_decoder_config(cfg, "EuroBERT", causal=False),
    table=decoder_table,
)
