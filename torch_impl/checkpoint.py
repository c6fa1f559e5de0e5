"""Sharded checkpoints in PyTorch: each rank writes its own shards; any mesh reads them.

Mirrors ``jax_impl/checkpoint.py``; the folder layout, the index and its atomic commit are
``shared/sharded.py``'s. Both frameworks write and read the same folders::

    checkpoint.save_sharded(model, "ckpt")                # every rank calls it
    model = checkpoint.load_sharded("ckpt", mesh=mesh)    # or mesh=None: one device

A rank writes the slices of its parameters (``DTensor.to_local()``, placed by the chunk
``DTensor.__create_chunk_list__`` gives, as ``torch.distributed.checkpoint`` does) whose
replica it is to write (the lowest rank holding them), and reads only the slices its
parameters need. Only the slices' names and offsets travel between ranks
(``all_gather_object``), never a tensor. ``nn.Linear`` weights are (out, in): their slices
are transposed to the format's (in, out) on the way out and back on the way in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from shared import sharded
from shared import weights as v1
from shared.inputs import check_finite_weights
from torch_impl.encoder import TransformerEncoder
from torch_impl.parallel import parallelize
from torch_impl.weights import from_weights, parameter_table, to_numpy

__all__ = ["load_sharded", "save_sharded"]


def save_sharded(model: TransformerEncoder, folder: str | os.PathLike) -> Path:
    """Write ``model``'s parameters as a sharded checkpoint in ``folder``; returns the index.

    Every rank calls it: each writes one file of the slices it holds (each distinct slice
    once, by the lowest rank that holds it), then rank 0 commits the index
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
    me = dist.get_rank() if dist.is_initialized() else 0
    if writes[me]:
        local = _local_slices(table)
        pieces = [(name, slices, local[name, slices]) for name, slices in writes[me]]
        k = writers.index(me) + 1
        sharded.write_file(folder, generation, k, len(writers), pieces, shapes)
    _barrier()  # every file written
    if me == 0:
        sharded.commit(folder, generation, model.config, files)
    _barrier()  # the index written
    return Path(folder) / sharded.INDEX


def _held(table) -> list[list[tuple[str, sharded.Slices]]]:
    """``(name, slice)`` of every parameter slice, per rank: each rank's own, all-gathered."""
    mine = [(name, slices) for name, param, layout in table for slices, _ in _chunk(param, layout)]
    if not dist.is_initialized():
        return [mine]
    held = [None] * dist.get_world_size()
    dist.all_gather_object(held, mine)
    return held


def _local_slices(table) -> dict[tuple[str, sharded.Slices], np.ndarray]:
    """This rank's slices of every parameter, as NumPy arrays (format-v1 layout)."""
    local = {}
    for name, param, layout in table:
        for slices, tensor in _chunk(param, layout):
            array = to_numpy(tensor)
            local[name, slices] = array.T if layout == "transpose" else array
    return local


def _chunk(param: torch.Tensor, layout: str) -> list[tuple[sharded.Slices, torch.Tensor]]:
    """The slice of ``param`` this rank holds (format-v1 axes) and its local tensor; none
    when the rank's share is empty (FSDP2's uneven last shards)."""
    if isinstance(param, DTensor):
        (chunk,) = param.__create_chunk_list__()
        slices = tuple((o, o + n) for o, n in zip(chunk.offsets, chunk.sizes, strict=True))
        tensor = param.to_local()
    else:
        slices, tensor = sharded.full(param.shape), param
    if any(a == b for a, b in slices):
        return []
    return [(slices[::-1] if layout == "transpose" else slices, tensor.detach())]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def load_sharded(
    folder: str | os.PathLike,
    mesh: DeviceMesh | None = None,
    *,
    fsdp: bool = False,
    backend: str = "math",
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> TransformerEncoder:
    """A model from a sharded checkpoint (either framework's, any mesh's), in eval mode.

    ``mesh=None``: one device, every tensor read whole. With a ``mesh`` (any shape; every
    rank calls it), the model is placed by the shared plan (``torch_impl.parallel.
    parallelize``) and each rank reads only its own slice of each parameter (resharding on
    load).

    Raises ValueError (a ``mesh`` that is not a mesh), FileNotFoundError (no index),
    ``CheckpointError`` (an index naming a missing
    file, shards that do not tile a tensor, a NaN or Inf unless ``allow_nonfinite``).
    """
    if mesh is not None and not isinstance(mesh, DeviceMesh):
        raise ValueError(
            f"mesh must be a DeviceMesh (torch_impl.parallel.make_mesh(data=..., ...)) or None, "
            f"got {type(mesh).__name__} {mesh!r}"
        )
    index = sharded.read_index(folder)
    if mesh is None:
        weights, cfg = sharded.load_weights(folder)
        return from_weights(
            weights, cfg, backend=backend, dtype=dtype, allow_nonfinite=allow_nonfinite
        )
    model = TransformerEncoder(index.config, backend=backend, dtype=dtype)
    parallelize(model, mesh, fsdp=fsdp)
    files = sharded.Files(index.folder)
    with torch.no_grad():
        for name, param, layout in parameter_table(model):
            for slices, tensor in _chunk(param, layout):
                array = sharded.read_slice(index, name, slices, files)
                if not allow_nonfinite:
                    check_finite_weights({name: array})
                array = array.T if layout == "transpose" else array
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(tensor.dtype))
    return model.eval()
