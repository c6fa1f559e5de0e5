"""keras-hub's ``BertBackbone`` on Keras's torch backend, as a ``torch.nn.Module`` called with
token ids (imported only where ``KERAS_BACKEND`` is "torch")."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch
from torch import nn

from benchmarks.peers.keras_bert import backbone, backbone_inputs
from shared.config import EncoderConfig

__all__ = ["KerasTorchEncoder", "build"]


class KerasTorchEncoder(nn.Module):
    """keras-hub's backbone (a ``torch.nn.Module`` on Keras's torch backend) called with token
    ids: ``sequence_output`` (B, T, D)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        # Keras registers its variables as torch parameters lazily; register them now, after
        # the weights were assigned, so that an optimizer holds the variables' own tensors
        model._track_variables()
        self.backbone = model
        n_params = len(list(self.parameters()))
        if n_params != len(model.weights):
            raise RuntimeError(
                f"expected the backbone's {len(model.weights)} variables as torch parameters, "
                f"found {n_params}"
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(backbone_inputs(input_ids))["sequence_output"]  # (B, T, D)


def build(cfg: EncoderConfig, weights: dict[str, np.ndarray], dtype: str) -> KerasTorchEncoder:
    """The backbone holding ``weights`` in ``dtype``, as a module called with token ids."""
    if keras.backend.backend() != "torch":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not 'torch'")
    return KerasTorchEncoder(backbone(cfg, weights, dtype))
