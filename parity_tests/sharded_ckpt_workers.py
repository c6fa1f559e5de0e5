"""Rank functions for test_sharded_checkpoint.py (importable, as spawned processes need).

One launch of 4 gloo ranks on a (data=2, model=2) mesh: load the JAX child's sharded save
onto the mesh, write a sharded checkpoint, then start a second write that rank 1 dies in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

import torch_impl
import torch_impl.precision
from parity_tests.helpers import make_inputs, random_weights, tiny_config
from shared import sharded
from torch_impl import checkpoint, parallel

CFG = tiny_config()
SEEDS = {"jax": 11, "torch": 12, "interrupted": 13, "after": 14}


def inputs() -> tuple[np.ndarray, np.ndarray]:
    ids, mask, _ = make_inputs(CFG, 4, 8, seed=2, pad="some")
    return ids, mask


def _die_half_way(tensors, path, metadata) -> None:
    """Write the file, keep its first half, and end the process without cleaning up: a
    writer killed in the middle of its shard."""
    from safetensors import numpy as st_numpy

    st_numpy.save_file(tensors, path, metadata=metadata)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    os._exit(3)


def run_ranks(rank: int, folder: str, jax_folder: str) -> None:
    torch_impl.precision.set_matmul_precision("float32")
    folder = Path(folder)
    mesh = parallel.make_mesh(data=2, model=2)
    # the JAX save (data=2 x model=2, fsdp) loaded onto this mesh with FSDP and TP, the
    # slices this rank reads of q recorded
    reads, read_slice = [], sharded.read_slice

    def record(index, tensor, slices, files=None):
        if tensor == "layers.0.attention.q.weight":
            reads.append(slices)
        return read_slice(index, tensor, slices, files)

    sharded.read_slice = record
    on_mesh = checkpoint.load_sharded(jax_folder, mesh, fsdp=True)
    sharded.read_slice = read_slice
    q = dict(on_mesh.named_parameters())["encoder.layers.0.attention.q.weight"]
    ids, mask = (parallel.slice_batch(a, mesh) for a in inputs())
    with torch.no_grad():
        h = torch_impl.to_numpy(on_mesh(ids, mask))
    back = torch_impl.export_weights(on_mesh)  # a collective: every rank
    local = q.to_local().shape
    np.savez(
        folder / f"from-jax-{rank}.npz",
        h=h,
        data_rank=mesh["data"].get_local_rank(),
        q_reads=np.array(reads),  # (reads, axes, 2): [start, stop) per axis
    )
    if rank == 0:
        np.savez(folder / "from-jax-weights.npz", q_local=np.array(local), **back)
    # a sharded save of this mesh (replicas along "data" written once)
    weights = random_weights(CFG, seed=SEEDS["torch"])
    model = parallel.parallelize(torch_impl.from_weights(weights, CFG), mesh)
    checkpoint.save_sharded(model, folder / "torch")
    # a second save of other weights that rank 1 dies in, half way through its file
    other = random_weights(CFG, seed=SEEDS["interrupted"])
    model = parallel.parallelize(torch_impl.from_weights(other, CFG), mesh)
    if rank == 1:
        sharded._write_tensors = _die_half_way
    checkpoint.save_sharded(model, folder / "torch")
