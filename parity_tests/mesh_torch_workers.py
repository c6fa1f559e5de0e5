"""Rank functions for test_parallel.py's PyTorch cases (importable, as spawned processes need).

Each runs in every process of a gloo group started by ``torch_impl.parallel.launch``, and
writes what it computed to ``folder`` for the test to compare with one device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import torch_impl
import torch_impl.precision
import torch_impl.train as tt
from parity_tests.helpers import make_inputs, random_weights, tiny_config
from shared import layouts
from shared.data import Dataset, TaskConfig
from shared.training import TrainConfig
from torch_impl import parallel

CFG = tiny_config()
TRAIN = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=20, max_grad_norm=0.5)
TASK = TaskConfig(task="first_last", vocab_size=CFG.vocab_size, seq_len=8)
BATCH = 4
# one encoder of the 2021-on parts (as mesh_jax_cases.py's): GQA, RoPE, a sliding window,
# q/k norm, SwiGLU, RMSNorm, no biases
MODERN = tiny_config(
    n_heads=4, n_kv_heads=2, positional="rope", qk_norm=True, sliding_window=2,
    layer_types=("full_attention", "sliding_attention"), gated_ffn=True, activation="silu",
    norm="rms_norm", norm_bias=False, attention_bias=False, mlp_bias=False,
    mlp_out_bias=False, norm_first=True, final_norm=True,
)  # fmt: skip


def forward_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The global batch of the forward cases (the same as mesh_jax_cases.py's)."""
    ids, mask, _ = make_inputs(CFG, BATCH, 8, seed=2, pad="some")
    return ids, mask


def forward_and_gradients(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """Hidden states and attention weights of this rank's rows, and the gradient of
    mean(h**2) over the global batch with respect to every parameter (format-v1 names)."""
    torch_impl.precision.set_matmul_precision("float32")
    mesh = parallel.make_mesh(data=data, model=model)
    sharded = torch_impl.from_weights(random_weights(CFG, seed=1), CFG)
    parallel.parallelize(sharded, mesh, fsdp=fsdp)
    ids, mask = (parallel.slice_batch(a, mesh) for a in forward_inputs())
    h, attentions = sharded(ids, mask, return_attention=True)
    np.savez(
        Path(folder) / f"forward-{rank}.npz",
        data_rank=mesh["data"].get_local_rank(),
        model_rank=mesh["model"].get_local_rank(),  # attention: this rank's H / M heads
        h=torch_impl.to_numpy(h),
        **{f"attention{i}": torch_impl.to_numpy(a) for i, a in enumerate(attentions)},
    )
    sharded.train()  # dropout is 0: the same numbers, and FSDP/DDP hooks run as in training
    loss = sharded(ids, mask).square().mean()  # this rank's share: DDP/FSDP average the ranks
    loss.backward()
    params = dict(sharded.named_parameters())
    table = torch_impl.rows(sharded)  # (module path, (format-v1 name,), layout)
    arrays = {path: torch_impl.to_numpy(params[path].grad) for path, _, _ in table}
    grads = layouts.from_outside(table, arrays)
    if rank == 0:
        np.savez(Path(folder) / "gradients.npz", **grads)


def modern_forward(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """The MODERN encoder sharded: hidden states and attention weights of this rank's rows
    (its own heads under tensor parallelism), and how layer 0's k weight is placed."""
    torch_impl.precision.set_matmul_precision("float32")
    mesh = parallel.make_mesh(data=data, model=model)
    sharded = torch_impl.from_weights(random_weights(MODERN, seed=3), MODERN)
    parallel.parallelize(sharded, mesh, fsdp=fsdp)
    ids, mask, _ = make_inputs(MODERN, BATCH, 8, seed=2, pad="some")
    ids, mask = parallel.slice_batch(ids, mesh), parallel.slice_batch(mask, mesh)
    with torch.no_grad():
        h, attentions = sharded(ids, mask, return_attention=True)
    k = sharded.encoder.layers[0].attention.k.weight
    np.savez(
        Path(folder) / f"modern-{rank}.npz",
        data_rank=mesh["data"].get_local_rank(),
        model_rank=mesh["model"].get_local_rank(),
        k_placements=str(getattr(k, "placements", "not a DTensor")),
        h=torch_impl.to_numpy(h),
        **{f"attention{i}": torch_impl.to_numpy(a) for i, a in enumerate(attentions)},
    )


def task_model() -> tt.SequenceClassifier:
    """The task model all runs start from: the same seed, so the same weights."""
    torch.manual_seed(0)
    return tt.build_model(CFG, TASK)


def train_ten_steps(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """10 updates of torch_impl/train.py's Trainer on this rank's rows of each global batch:
    the global mean loss of each step, and the final weights."""
    torch_impl.precision.set_matmul_precision("float32")
    mesh = parallel.make_mesh(data=data, model=model)
    trainer = tt.Trainer(parallel.parallelize(task_model(), mesh, fsdp=fsdp), TRAIN)
    dataset = Dataset(TASK, batch_size=BATCH, seed=0)
    losses = []
    for step in range(10):
        local = parallel.slice_batch(dataset.batch(step), mesh)
        loss, _ = trainer.step([local])
        mean = torch.tensor(loss)  # each rank's mean over its rows, equal row counts
        dist.all_reduce(mean, op=dist.ReduceOp.AVG)  # read back for the test only
        losses.append(float(mean))
    weights = torch_impl.export_weights(trainer.model.encoder)  # sharded: every rank calls it
    weights["head.weight"] = torch_impl.to_numpy(trainer.model.head.weight).T
    weights["head.bias"] = torch_impl.to_numpy(trainer.model.head.bias)
    if rank == 0:
        np.savez(Path(folder) / "train.npz", losses=np.array(losses), **weights)


def save_sharded(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """A sharded model saved by every rank (written once), and a checkpoint loaded onto the
    mesh and exported back."""
    mesh = parallel.make_mesh(data=data, model=model)
    sharded = torch_impl.from_weights(random_weights(CFG, seed=6), CFG)
    torch_impl.save(
        parallel.parallelize(sharded, mesh, fsdp=fsdp), Path(folder) / "sharded.safetensors"
    )
    on_mesh = parallel.load(Path(folder) / "one.safetensors", mesh, fsdp=fsdp)
    back = torch_impl.export_weights(on_mesh)
    if rank == 0:
        np.savez(Path(folder) / "loaded.npz", **back)


def dropout_outputs(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """Train-mode outputs with dropout, every rank seeded alike, as ranks compute them."""
    cfg = CFG.replace(dropout=0.3)
    mesh = parallel.make_mesh(data=data, model=model)
    sharded = torch_impl.from_weights(random_weights(cfg, seed=4), cfg)
    parallel.parallelize(sharded, mesh, fsdp=fsdp)
    sharded.train()
    ids, _ = forward_inputs()
    torch.manual_seed(7)
    h = sharded(parallel.slice_batch(ids, mesh))
    np.savez(
        Path(folder) / f"dropout-{rank}.npz",
        data_rank=mesh["data"].get_local_rank(),
        h=h.detach().numpy(),
    )


def run_cases(rank: int, folder: str, data: int, model: int, fsdp: bool) -> None:
    """Every case on one mesh, in one launch (starting processes is the expensive part)."""
    forward_and_gradients(rank, folder, data, model, fsdp)
    modern_forward(rank, folder, data, model, fsdp)
    train_ten_steps(rank, folder, data, model, fsdp)
    save_sharded(rank, folder, data, model, fsdp)
    dropout_outputs(rank, folder, data, model, fsdp)


def fail_on_rank_1(rank: int) -> None:
    """Rank 1 raises; the others wait in a collective that will never complete."""
    if rank == 1:
        raise RuntimeError("rank 1 found a bad batch")
    dist.barrier()


def bad_inputs(rank: int, folder: str) -> None:
    """The ValueError of each bad mesh, split or batch, written down for the test (2 ranks)."""
    cases = {
        "too_many": lambda: parallel.make_mesh(data=4, model=2),
        "heads": lambda: parallel.parallelize(
            torch_impl.TransformerEncoder(CFG.replace(n_heads=1)), parallel.make_mesh(model=2)
        ),
        "d_ff": lambda: parallel.parallelize(
            torch_impl.TransformerEncoder(CFG.replace(d_ff=33)), parallel.make_mesh(model=2)
        ),
        "batch": lambda: parallel.slice_batch(np.zeros((3, 4)), parallel.make_mesh(data=2)),
    }
    messages = {}
    for name, case in cases.items():
        try:
            case()
        except ValueError as error:
            messages[name] = str(error)
    if rank == 0:
        np.savez(Path(folder) / "errors.npz", **messages)
