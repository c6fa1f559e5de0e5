"""The JAX adapters: dtypes, arrays to NumPy, and weights in and out of checkpoint format v1.

Mirrors ``torch_impl/weights.py``. The model's table, :func:`rows`, is derived from its module
paths (:data:`RENAMES` turns a path into a format-v1 name) and ordered and checked by
``shared/tensors.py``; its rows are what ``shared.layouts.to_outside`` / ``from_outside``
consume, as every other weight table in the project. Export, import, save and load read it.

Every function here works on a model sharded with ``jax_impl.parallel`` too
(``NamedSharding``): on several hosts :func:`export_weights` and :func:`save` are then
collectives, called by every process.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jax_impl.encoder import TransformerEncoder
from shared import layouts
from shared import weights as v1
from shared.config import EncoderConfig
from shared.inputs import check_finite_weights
from shared.tensors import tensors

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

# The project's dtype names (shared.tolerances, the benchmarks) -> JAX's dtypes.
DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}

# Module path parts -> format-v1 name parts; "encoder." (the stack) is dropped.
RENAMES = {
    "in_proj": "in",
    "out_proj": "out",
    "gate_proj": "gate",
    "kernel": "weight",
    "embedding": "weight",
    "scale": "weight",
}


def to_numpy(x) -> np.ndarray:
    """An array (or anything NumPy takes) as a NumPy array on the host, whole.

    bfloat16 and float16 come out as float32 (exact; NumPy has no bfloat16). An array
    sharded over several hosts is gathered first (a collective: every process must call it).
    """
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    if x.dtype in (jnp.bfloat16, jnp.float16):
        x = x.astype(jnp.float32)
    return np.asarray(x)


def rows(model: TransformerEncoder) -> list[layouts.Row]:
    """``(module path, (format-v1 name,), layout)`` for every parameter, in checkpoint order.

    ``nnx.Linear.kernel`` is already (in, out), as format v1 stores it: every layout is ``copy``.
    Raises ValueError if the model's parameters and ``shared/tensors.py`` disagree.
    """
    found = {_v1_name(path): (path, "copy") for path in _parameters(model)}
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


def parameter_table(model: TransformerEncoder) -> list[tuple[str, nnx.Param, str]]:
    """``(format-v1 name, parameter, layout)`` for every parameter of ``model`` (:func:`rows`)."""
    params = _parameters(model)
    return [(names[0], params[path], layout) for path, names, layout in rows(model)]


def _parameters(model: nnx.Module) -> dict[str, nnx.Param]:
    return {
        ".".join(str(part) for part in path): p
        for path, p in nnx.iter_graph(model)
        if isinstance(p, nnx.Param)
    }


def export_weights(model: TransformerEncoder) -> dict[str, np.ndarray]:
    """Format-v1 weights as NumPy arrays, full and exact, of a model sharded or not
    (bfloat16 and float16 come out as float32). On several hosts every process calls it."""
    params = _parameters(model)
    table = rows(model)
    arrays = {path: to_numpy(params[path].get_value()) for path, _, _ in table}
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
    for path, a in arrays.items():
        param = params[path]
        param[...] = jnp.asarray(a, dtype=param.dtype)
    return model


def save(model: TransformerEncoder, path: str | os.PathLike) -> None:
    """Write weights and config to one format-v1 ``.safetensors`` file, atomically.

    On several hosts every process calls it; process 0 writes the file.
    """
    weights = export_weights(model)
    if jax.process_index() == 0:
        v1.save_file(path, weights, model.config)


def load(
    path: str | os.PathLike,
    *,
    backend: str = "math",
    dtype=None,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """Build a model from any format-v1 checkpoint (saved by either implementation).

    The model comes back in eval mode, ready for inference; call ``.train()`` to train it.
    ``rngs`` seeds dropout should it be trained (default ``nnx.Rngs(0)``).
    """
    weights, cfg = v1.load_file(path)
    return from_weights(
        weights, cfg, backend=backend, dtype=dtype, rngs=rngs, allow_nonfinite=allow_nonfinite
    )


def from_weights(
    weights: dict[str, np.ndarray],
    cfg: EncoderConfig,
    *,
    backend: str = "math",
    dtype=None,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """A model in eval mode holding ``weights`` (format v1), e.g. from ``shared.hf.load_bert``."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    model = TransformerEncoder(cfg, backend=backend, dtype=dtype, rngs=rngs)
    import_weights(model, weights, allow_nonfinite=allow_nonfinite)
    model.eval()
    return model
