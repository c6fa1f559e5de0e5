"""One process of a ``torchrun`` run over two "nodes", for test_multihost.py (run as a script).

``torchrun --nnodes=2 --nproc-per-node=2 ... parity_tests/multihost_torch_worker.py FOLDER
CASE``: each process joins through ``torch_impl.parallel.initialize()`` (no arguments: it
reads torchrun's environment) and runs ``CASE``:

* ``cases``: on meshes (data=2, model=2) and (data=4), the hidden states, the gradients and
  10 AdamW steps of parity_tests/mesh_torch_workers.py, written under ``FOLDER/<mesh>``.
* ``die``: steps of an all-reduce over (data=4); global rank 3 (on the second node) exits
  in the middle of step 1, the others wait for it in the step's all-reduce.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from torch_impl import parallel

MESHES = [(2, 2), (4, 1)]  # (data, model)


def run_cases(rank: int, folder: Path) -> None:
    from parity_tests import mesh_torch_workers as W  # imports JAX too: only here

    for data, model in MESHES:
        out = folder / f"{data}x{model}"
        out.mkdir(exist_ok=True)
        W.forward_and_gradients(rank, str(out), data, model, False)
        W.train_ten_steps(rank, str(out), data, model, False)


def run_die(rank: int) -> None:
    """Steps of one all-reduce each (a training step's gradient average, without the model:
    starting processes is the slow part); rank 3 exits in the middle of step 1."""
    mesh = parallel.make_mesh(data=4)
    for step in range(3):
        gradient = torch.full((16,), float(rank))
        if step == 1 and rank == 3:
            print("rank 3 exits in the middle of step 1", flush=True)
            os._exit(3)
        dist.all_reduce(gradient, group=mesh["data"].get_group())
        print(f"rank {rank} finished step {step}", flush=True)


if __name__ == "__main__":
    folder, case = Path(sys.argv[1]), sys.argv[2]
    parallel.initialize(timeout_s=60)
    rank = dist.get_rank()
    run_cases(rank, folder) if case == "cases" else run_die(rank)
    dist.destroy_process_group()
