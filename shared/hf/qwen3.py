"""Qwen3 (``model_type`` "qwen3"; Qwen team 2025): Llama's causal stack plus an RMSNorm over
each head of q and of k (``q_norm``, ``k_norm``, over head_dim, before RoPE), and a head
width ``head_dim`` that need not be hidden_size / heads. config.json and tensor names as
Llama's (``llama.py``); Qwen3's MLP has no biases.

Sliding-window layers (``use_sliding_window`` with ``layer_types`` holding
"sliding_attention") are refused: Qwen3's causal window keeps ``sliding_window`` keys
including the query, which is not this encoder's window.
"""

from __future__ import annotations

from typing import Any

from shared.config import EncoderConfig
from shared.hf.family import Family
from shared.hf.llama import decoder_config, decoder_table, export_decoder_config

__all__ = ["FAMILY"]


def _config(data: dict[str, Any]) -> EncoderConfig:
    sliding = [t for t in data.get("layer_types") or () if t != "full_attention"]
    if data.get("use_sliding_window") or sliding:
        raise ValueError(
            f"use_sliding_window is {data.get('use_sliding_window')!r} with layer types "
            f"{sorted(set(sliding)) or ['full_attention']}; only full attention is supported "
            "(Qwen3's causal window is not this encoder's sliding window)"
        )
    return decoder_config(
        data, causal=True, qk_norm=True, defaults={"max_position_embeddings": 32768}
    )


FAMILY = Family(
    name="Qwen3",
    model_types=("qwen3",),
    architecture="Qwen3Model",
    prefix="model.",
    skipped=("lm_head.*", "rotary_emb.inv_freq"),
    config=_config,
    export_config=lambda cfg: export_decoder_config(cfg, "Qwen3", causal=True, qk_norm=True),
    table=decoder_table,
)
