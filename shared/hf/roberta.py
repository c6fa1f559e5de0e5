"""RoBERTa and XLM-RoBERTa (``model_type`` "roberta", "xlm-roberta"): BERT's body and names,
with positions computed from the ids: real tokens count from ``pad_token_id + 1``, pads sit
at ``pad_token_id`` (``EncoderConfig.position_pad_id``), so the table has ``max_len + 2``
rows for ``max_len`` tokens. Real checkpoints have ``type_vocab_size`` 1 and eps 1e-5.
"""

from __future__ import annotations

from typing import Any

from shared.config import EncoderConfig
from shared.hf import bert
from shared.hf.family import Family

__all__ = ["FAMILY"]


def _config(data: dict[str, Any]) -> EncoderConfig:
    return bert.encoder_config(data, "RoBERTa", position_pad_id=data.get("pad_token_id", 1))


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    if cfg.position_pad_id is None:
        raise ValueError(
            "RoBERTa cannot express position_pad_id=None: its positions always count from "
            "pad_token_id + 1"
        )
    config = bert.export_encoder_config(cfg, "RoBERTa", position_pad_id=cfg.position_pad_id)
    return config | {"pad_token_id": cfg.position_pad_id}


FAMILY = Family(
    name="RoBERTa",
    model_types=("roberta", "xlm-roberta"),
    architecture="RobertaModel",
    prefix="roberta.",
    skipped=(*bert.FAMILY.skipped, "lm_head.*"),
    config=_config,
    export_config=_export_config,
    table=bert.table,
)
