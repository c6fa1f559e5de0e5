"""Sharded checkpoints in JAX: each process writes its own shards; any mesh reads them.

Mirrors ``torch_impl/checkpoint.py``; the folder layout, the index and its atomic commit
are ``shared/sharded.py``'s. Both frameworks write and read the same folders::

    checkpoint.save_sharded(model, "ckpt")                # every process calls it
    model = checkpoint.load_sharded("ckpt", mesh=mesh)    # or mesh=None: one device

A process writes the slices of its devices (``addressable_shards``) whose replica it is to
write (the lowest process holding them), and reads only the slices its devices need: a
parameter is built with ``jax.make_array_from_callback``, whose callback reads the device's
slice from the shards that overlap it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jax_impl.encoder import TransformerEncoder
from jax_impl.parallel import parallelize
from jax_impl.weights import from_weights, parameter_table, to_numpy
from shared import sharded
from shared import weights as v1
from shared.inputs import check_finite_weights

__all__ = ["load_sharded", "save_sharded"]


def save_sharded(model: TransformerEncoder, folder: str | os.PathLike) -> Path:
    """Write ``model``'s parameters as a sharded checkpoint in ``folder``; returns the index.

    Every process calls it: each writes one file of the slices it holds (each distinct
    slice once, by the lowest process that holds it), then process 0 commits the index
    (``shared.sharded.commit``). Nothing is gathered; a sharded or whole model alike.

    Raises ``shared.atomic.OutputPathError`` when ``folder`` or a parent is a file.
    """
    table = parameter_table(model)
    shapes = v1.expected_shapes(model.config)
    generation = sharded.next_generation(folder)
    held = _held(table)
    writes = sharded.assign(held, shapes)
    writers = [p for p, pieces in enumerate(writes) if pieces]
    files = {
        sharded.file_name(generation, k + 1, len(writers)): writes[p] for k, p in enumerate(writers)
    }
    me = jax.process_index()
    if writes[me]:
        local = _local_slices(table)
        pieces = [(name, slices, local[name, slices]) for name, slices in writes[me]]
        k = writers.index(me) + 1
        sharded.write_file(folder, generation, k, len(writers), pieces, shapes)
    multihost_utils.sync_global_devices("save_sharded: every file written")
    if me == 0:
        sharded.commit(folder, generation, model.config, files)
    multihost_utils.sync_global_devices("save_sharded: index written")
    return Path(folder) / sharded.INDEX


def _held(table) -> list[list[tuple[str, sharded.Slices]]]:
    """``(name, slice)`` of every parameter slice, per process, from the global sharding."""
    held = [[] for _ in range(jax.process_count())]
    for name, param, _ in table:
        value = param.get_value()
        for device, index in value.sharding.devices_indices_map(value.shape).items():
            held[device.process_index].append((name, _slices(index, value.shape)))
    return held


def _local_slices(table) -> dict[tuple[str, sharded.Slices], np.ndarray]:
    """This process's slices of every parameter, as NumPy arrays (format-v1 layout)."""
    local = {}
    for name, param, _ in table:
        value = param.get_value()
        for shard in value.addressable_shards:
            local[name, _slices(shard.index, value.shape)] = to_numpy(shard.data)
    return local


def _slices(index: tuple[slice, ...], shape: tuple[int, ...]) -> sharded.Slices:
    """A device's index (slices, possibly open-ended) as ``((start, stop), ...)``."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))


def load_sharded(
    folder: str | os.PathLike,
    mesh: Mesh | None = None,
    *,
    fsdp: bool = False,
    backend: str = "math",
    dtype=None,
    rngs: nnx.Rngs | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """A model from a sharded checkpoint (either framework's, any mesh's), in eval mode.

    ``mesh=None``: one device, every tensor read whole. With a ``mesh`` (any shape), the
    model is placed by the shared plan (``jax_impl.parallel.parallelize``) and each device
    reads only its own slice of each parameter (resharding on load).

    Raises ValueError (a ``mesh`` that is not a mesh), FileNotFoundError (no index),
    ``CheckpointError`` (an index naming a missing
    file, shards that do not tile a tensor, a NaN or Inf unless ``allow_nonfinite``).
    """
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ValueError(
            f"mesh must be a Mesh (jax_impl.parallel.make_mesh(data=..., ...)) or None, "
            f"got {type(mesh).__name__} {mesh!r}"
        )
    index = sharded.read_index(folder)
    if mesh is None:
        weights, cfg = sharded.load_weights(folder)
        return from_weights(
            weights, cfg, backend=backend, dtype=dtype, rngs=rngs, allow_nonfinite=allow_nonfinite
        )
    rngs = nnx.Rngs(0) if rngs is None else rngs
    model = TransformerEncoder(index.config, backend=backend, dtype=dtype, rngs=rngs)
    parallelize(model, mesh, fsdp=fsdp)
    files = sharded.Files(index.folder)
    for name, param, _ in parameter_table(model):
        value = param.get_value()
        read = {}

        def slice_of(device_index, name=name, value=value, read=read):
            slices = _slices(device_index, value.shape)
            if slices not in read:  # replicas read once
                array = sharded.read_slice(index, name, slices, files)
                if not allow_nonfinite:
                    check_finite_weights({name: array})
                read[slices] = array.astype(value.dtype)
            return read[slices]

        param.set_value(jax.make_array_from_callback(value.shape, value.sharding, slice_of))
    model.eval()
    return model
