"""The PyTorch adapters: dtypes, arrays to NumPy, and weights in and out of checkpoint format v1.

Mirrors ``jax_impl/weights.py``. The model's table, :func:`rows`, is derived from its module
paths (:data:`RENAMES` turns a path into a format-v1 name) and ordered and checked by
``shared/tensors.py``; its rows are what ``shared.layouts.to_outside`` / ``from_outside``
consume, as every other weight table in the project. Export, import, save and load read it.

Every function here works on a model sharded with ``torch_impl.parallel`` too (DTensor
parameters): :func:`export_weights` and :func:`save` are then collectives, called by every
rank (``DTensor.full_tensor`` gathers the shards).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from shared import layouts
from shared import weights as v1
from shared.config import EncoderConfig
from shared.inputs import check_finite_weights
from shared.tensors import tensors
from torch_impl.encoder import TransformerEncoder

__all__ = [
    "DTYPES",
    "RENAMES",
    "export_weights",
    "from_weights",
    "import_weights",
    "load",
    "parameter_table",
    "rows",
    "save",
    "to_numpy",
]

# The project's dtype names (shared.tolerances, the benchmarks) -> PyTorch's dtypes.
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# Module path parts -> format-v1 name parts; "encoder." (the stack) is dropped.
RENAMES = {"in_proj": "in", "out_proj": "out", "gate_proj": "gate"}


def to_numpy(x) -> np.ndarray:
    """A tensor (or anything NumPy takes) as a NumPy array on the host, whole.

    bfloat16 and float16 come out as float32 (exact; NumPy has no bfloat16). A DTensor is
    gathered first (``full_tensor``, a collective: every rank must call it).
    """
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach()
    if isinstance(x, DTensor):
        x = x.full_tensor()
    x = x.cpu()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.numpy()


def rows(model: TransformerEncoder) -> list[layouts.Row]:
    """``(module path, (format-v1 name,), layout)`` for every parameter, in checkpoint order.

    ``nn.Linear.weight`` is (out, in); format v1 stores (in, out), hence ``transpose``.
    Raises ValueError if the model's parameters and ``shared/tensors.py`` disagree.
    """
    linear = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = {
        _v1_name(path): (path, "transpose" if path in linear else "copy")
        for path in _parameters(model)
    }
    return [(found[name][0], (name,), found[name][1]) for name in _names(model, found)]


def _v1_name(path: str) -> str:
    parts = path.removeprefix("encoder.").split(".")
    return ".".join(RENAMES.get(part, part) for part in parts)


def _names(model, found) -> list[str]:
    names = [t.name for t in tensors(model.config)]
    if set(names) != set(found):
        missing, extra = sorted(set(names) - set(found)), sorted(set(found) - set(names))
        raise ValueError(
            f"the model's parameters disagree with shared/tensors.py: missing {missing}, "
            f"not in the table {extra}"
        )
    return names


def parameter_table(model: TransformerEncoder) -> list[tuple[str, torch.Tensor, str]]:
    """``(format-v1 name, parameter, layout)`` for every parameter of ``model`` (:func:`rows`)."""
    params = _parameters(model)
    return [(names[0], params[path], layout) for path, names, layout in rows(model)]


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def export_weights(model: TransformerEncoder) -> dict[str, np.ndarray]:
    """Format-v1 weights as NumPy arrays, full and exact, of a model sharded or not
    (bfloat16 and float16 come out as float32). Sharded: every rank must call it."""
    params = _parameters(model)
    table = rows(model)
    arrays = {path: to_numpy(params[path]) for path, _, _ in table}
    return layouts.from_outside(table, arrays)  # copies, never views of the parameters


def import_weights(
    model: TransformerEncoder, weights: dict[str, np.ndarray], *, allow_nonfinite: bool = False
) -> TransformerEncoder:
    """Copy format-v1 ``weights`` into ``model`` (cast to its dtype). Strict: see
    ``shared.weights.validate``; a NaN or Inf raises ``CheckpointError`` naming the tensor
    unless ``allow_nonfinite`` (``shared.inputs.check_finite_weights``)."""
    v1.validate(weights, model.config)
    if not allow_nonfinite:
        check_finite_weights(weights)
    params = _parameters(model)
    table = rows(model)
    weights = {name: v1.as_numpy_float(a) for name, a in weights.items()}
    shapes = {path: tuple(params[path].shape) for path, _, _ in table}
    arrays = layouts.to_outside(table, weights, shapes=shapes)
    with torch.no_grad():
        for path, a in arrays.items():
            param = params[path]
            param.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(param.dtype))
    return model


def save(model: TransformerEncoder, path: str | os.PathLike) -> None:
    """Write weights and config to one format-v1 ``.safetensors`` file, atomically.

    A sharded model (DTensor parameters): every rank calls it; rank 0 writes the file, and
    it exists on every rank when ``save`` returns.
    """
    weights = export_weights(model)
    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    if not sharded or dist.get_rank() == 0:
        v1.save_file(path, weights, model.config)
    if sharded:
        dist.barrier()  # the file exists when save returns, on every rank


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
