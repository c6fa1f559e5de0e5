"""Weight transfer between the PyTorch model and checkpoint format v1 (``shared/weights.py``).

One table, :func:`parameter_table`, names every parameter in format v1 with its layout (in the
vocabulary of ``shared/layouts.py``); export, import, save and load all read it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from shared import layouts
from shared import weights as v1
from shared.config import EncoderConfig
from shared.inputs import check_finite_weights
from torch_impl.encoder import TransformerEncoder

__all__ = ["export_weights", "from_weights", "import_weights", "load", "parameter_table", "save"]


def parameter_table(model: TransformerEncoder) -> list[tuple[str, torch.Tensor, str]]:
    """``(format-v1 name, parameter, layout)`` for every parameter of ``model``.

    ``nn.Linear.weight`` is (out, in); format v1 stores (in, out), hence ``transpose``.
    """
    emb, enc = model.embeddings, model.encoder
    table = []
    if emb.token is not None:
        table.append(("embeddings.token.weight", emb.token.weight, "copy"))
    if emb.patch is not None:
        table.append(("embeddings.patch.weight", emb.patch.weight, "copy"))
        table.append(("embeddings.patch.bias", emb.patch.bias, "copy"))
        table.append(("embeddings.class_token", emb.class_token, "copy"))
    if emb.position is not None:
        table.append(("embeddings.position.weight", emb.position.weight, "copy"))
    if emb.token_type is not None:
        table.append(("embeddings.token_type.weight", emb.token_type.weight, "copy"))
    if emb.norm is not None:
        table += _norm("embeddings.norm", emb.norm)
    if emb.project is not None:
        table += _linear("embeddings.project", emb.project)
    for i, layer in enumerate(enc.layers):
        p = f"layers.{i}"
        for name in ("q", "k", "v", "out"):
            table += _linear(f"{p}.attention.{name}", getattr(layer.attention, name))
        table += _norm(f"{p}.norm1", layer.norm1)
        table += _linear(f"{p}.ffn.in", layer.ffn.in_proj)
        table += _linear(f"{p}.ffn.out", layer.ffn.out_proj)
        table += _norm(f"{p}.norm2", layer.norm2)
    if enc.final_norm is not None:
        table += _norm("final_norm", enc.final_norm)
    return table


def _linear(prefix: str, linear: torch.nn.Linear) -> list[tuple[str, torch.Tensor, str]]:
    return [
        (f"{prefix}.weight", linear.weight, "transpose"),
        (f"{prefix}.bias", linear.bias, "copy"),
    ]


def _norm(prefix: str, norm: torch.nn.LayerNorm) -> list[tuple[str, torch.Tensor, str]]:
    return [(f"{prefix}.weight", norm.weight, "copy"), (f"{prefix}.bias", norm.bias, "copy")]


def export_weights(model: TransformerEncoder) -> dict[str, np.ndarray]:
    """Format-v1 weights as NumPy arrays (bfloat16 and float16 come out as float32)."""
    out = {}
    for name, param, layout in parameter_table(model):
        t = param.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()  # NumPy has no bfloat16
        a = t.numpy()
        (a,) = layouts.LAYOUTS[layout].split(a, 1)
        out[name] = np.array(a, order="C")  # a copy, never a view
    return out


def import_weights(
    model: TransformerEncoder, weights: dict[str, np.ndarray], *, allow_nonfinite: bool = False
) -> TransformerEncoder:
    """Copy format-v1 ``weights`` into ``model`` (cast to its dtype). Strict: see
    ``shared.weights.validate``; a NaN or Inf raises ``CheckpointError`` naming the tensor
    unless ``allow_nonfinite`` (``shared.inputs.check_finite_weights``)."""
    v1.validate(weights, model.config)
    if not allow_nonfinite:
        check_finite_weights(weights)
    with torch.no_grad():
        for name, param, layout in parameter_table(model):
            a = v1.as_numpy_float(weights[name])
            a = layouts.LAYOUTS[layout].join([a], 1)
            param.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(param.dtype))
    return model


def save(model: TransformerEncoder, path: str | os.PathLike) -> None:
    """Write weights and config to one format-v1 ``.safetensors`` file, atomically."""
    v1.save_file(path, export_weights(model), model.config)


def load(
    path: str | os.PathLike,
    *,
    backend: str = "math",
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """Build a model from any format-v1 checkpoint (saved by either implementation).

    The model comes back in eval mode, ready for inference; call ``.train()`` to train it.
    """
    weights, cfg = v1.load_file(path)
    return from_weights(weights, cfg, backend=backend, dtype=dtype, allow_nonfinite=allow_nonfinite)


def from_weights(
    weights: dict[str, np.ndarray],
    cfg: EncoderConfig,
    *,
    backend: str = "math",
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """A model in eval mode holding ``weights`` (format v1), e.g. from ``shared.hf.load_bert``."""
    model = TransformerEncoder(cfg, backend=backend, dtype=dtype)
    import_weights(model, weights, allow_nonfinite=allow_nonfinite)
    return model.eval()
