"""``transformers.BertModel`` in PyTorch, from format-v1 weights: the ``hf`` peers.

The weights go through ``shared.hf.save`` (``config.json`` + ``model.safetensors``) and come
back through ``transformers.AutoModel.from_pretrained``, the path a user's checkpoint takes;
the pooler is left out (``add_pooling_layer=False``: it is a head, not the encoder). The
model is called as users call it, ``model(input_ids=ids)``: no attention mask (no padding),
token types 0 (BertModel's buffer), and the last hidden state is the output.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from shared import hf
from shared.config import EncoderConfig

__all__ = ["HFEncoder", "build"]


class HFEncoder(nn.Module):
    """A ``transformers`` encoder called with token ids: its last hidden state (B, T, D)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state  # (B, T, D)


def build(cfg: EncoderConfig, weights: dict, dtype: torch.dtype, *, attention: str) -> HFEncoder:
    """``BertModel`` holding ``weights`` in ``dtype``, with ``attn_implementation=attention``
    ("sdpa" or "eager"). ValueError when BERT cannot express ``cfg`` (``shared.hf.save``)."""
    import transformers

    transformers.logging.set_verbosity_error()  # no load report: every tensor is expected
    transformers.logging.disable_progress_bar()  # nor a progress bar on stderr
    with tempfile.TemporaryDirectory(prefix="twin-encoder-hf-") as folder:
        hf.save(weights, cfg, folder, model_type="bert")
        model = transformers.AutoModel.from_pretrained(
            folder, attn_implementation=attention, dtype=dtype, add_pooling_layer=False
        )
    return HFEncoder(model)
