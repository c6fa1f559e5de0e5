"""ELECTRA (``model_type`` "electra"), the discriminator's body: BERT's names, with the
embeddings (and their LayerNorm) ``embedding_size`` wide (``EncoderConfig.embed_dim``) and
``embeddings_project`` mapping them to ``hidden_size``, present only when the two differ.
"""

from __future__ import annotations

from typing import Any

from shared import layouts
from shared.config import EncoderConfig
from shared.hf import bert
from shared.hf.family import Family

__all__ = ["FAMILY"]

DEFAULTS = {"embedding_size": 128}  # transformers' ElectraConfig

PROJECT: tuple[layouts.Row, ...] = (
    ("embeddings_project.weight", ("embeddings.project.weight",), "transpose"),
    ("embeddings_project.bias", ("embeddings.project.bias",), "copy"),
)


def _config(data: dict[str, Any]) -> EncoderConfig:
    data = DEFAULTS | data
    width = data["embedding_size"]
    return bert.encoder_config(
        data, "ELECTRA", embed_dim=0 if width == data.get("hidden_size") else width
    )


def _export_config(cfg: EncoderConfig) -> dict[str, Any]:
    config = bert.export_encoder_config(cfg, "ELECTRA", embed_dim=cfg.embed_dim)
    return config | {"embedding_size": cfg.embed_width}


def _table(cfg: EncoderConfig) -> list[layouts.Row]:
    return bert.table(cfg) + list(PROJECT if cfg.embed_dim else ())


FAMILY = Family(
    name="ELECTRA",
    model_types=("electra",),
    architecture="ElectraModel",
    prefix="electra.",
    skipped=(
        *bert.FAMILY.skipped,
        "discriminator_predictions.*",  # ElectraForPreTraining's head
        "generator_predictions.*",  # ElectraForMaskedLM's head
        "generator_lm_head.*",
    ),
    config=_config,
    export_config=_export_config,
    table=_table,
)
