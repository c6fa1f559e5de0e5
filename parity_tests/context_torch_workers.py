"""Rank functions for test_context_parallel.py's PyTorch cases (importable, as spawned
processes need). Each runs in every process of a gloo group started by
``torch_impl.parallel.launch`` and writes what its rank computed to ``folder``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared import EncoderConfig, reference
from shared import parallel as plan
from torch_impl import context, parallel
from torch_impl.weights import from_weights

B, H, T, HD = 2, 2, 16, 8  # d_model 16 in 2 heads
BLOCK = 3  # flash blocks that do not divide the chunks: partial blocks too
CASES = [
    (method, load_balance, causal)
    for method in context.METHODS
    for load_balance in (False, True)
    for causal in (False, True)
]


def inputs(seed: int = 0, t: int = T, ragged: bool = True):
    """q, k, v (B, H, T, hd), the weights w of the loss sum(out * w), and the padding mask
    (B, T): sequence 0 whole, sequence 1 with 11 real tokens (padding crosses shards)."""
    rng = np.random.default_rng(seed)
    q, k, v, w = (rng.standard_normal((B, H, t, HD)).astype(np.float32) for _ in range(4))
    real = np.ones((B, t), dtype=bool)
    if ragged:
        real[1, 11:] = False
    return q, k, v, w, real


# Whole encoders: a 2-layer post-norm one with sinusoidal positions, and a modern one (RoPE,
# grouped-query attention, a sliding-window layer, RMSNorm, pre-norm, SwiGLU).
MODEL = EncoderConfig(
    vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=32, dropout=0.0
)
MODERN = EncoderConfig(
    vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, d_ff=32, n_layers=2, max_len=32,
    dropout=0.0, positional="rope", norm="rms_norm", norm_bias=False, norm_first=True,
    final_norm=True, gated_ffn=True, activation="silu", attention_bias=False, mlp_bias=False,
    mlp_out_bias=False, sliding_window=3, layer_types=("sliding_attention", "full_attention"),
)  # fmt: skip
CONFIGS = {"model": MODEL, "modern": MODERN}
ROBERTA = MODEL.replace(positional="learned", position_pad_id=1)  # positions counted past pads
# name: (config, method, load balancing, causal, seq sizes of the PyTorch launches that run
# it); context_jax_cases.py runs them all but the seq=4 one, with data=2 x seq=2 once
MODEL_CASES = {
    "model-ring-plain-full": ("model", "ring", False, False, (2,)),
    "model-all_gather-lb-causal": ("model", "all_gather", True, True, (2,)),
    "model-ring-lb-causal": ("model", "ring", True, True, (4,)),
    "modern-ring-lb-causal": ("modern", "ring", True, True, (2,)),
}


def model_inputs(cfg: EncoderConfig, seed: int = 0):
    """input_ids (B, T), attention_mask (B, T) (sequence 1 with 11 real tokens: padding
    crosses shards) and the weights w (B, T, D) of the loss sum(h * w)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[1, 11:] = False
    w = rng.standard_normal((B, T, cfg.d_model)).astype(np.float32)
    return ids, mask, w


def model_weights(cfg: EncoderConfig) -> dict[str, np.ndarray]:
    return reference.init_weights(cfg, seed=0)


def case_name(method: str, load_balance: bool, causal: bool) -> str:
    return f"{method}-{'lb' if load_balance else 'plain'}-{'causal' if causal else 'full'}"


def _attend(folder, rank, mesh, name, method, load_balance, causal, t=T, ragged=True):
    """One case on this rank: its rows of the output and of dq, dk, dv, and the collective
    steps of the forward and of the backward."""
    q, k, v, w, real = inputs(t=t, ragged=ragged)
    group = mesh["seq"].get_group()
    data, data_rank = mesh["data"].size(), mesh["data"].get_local_rank()
    model, model_rank = mesh["model"].size(), mesh["model"].get_local_rank()
    rows = slice(data_rank * B // data, (data_rank + 1) * B // data)  # this data rank's batch
    heads = slice(model_rank * H // model, (model_rank + 1) * H // model)  # its heads
    local = {}
    for key, array in {"q": q, "k": k, "v": v, "w": w}.items():
        local[key], positions = context.slice_sequence(
            torch.from_numpy(array[rows, heads]), group, dim=2, load_balance=load_balance
        )
    real_local, _ = context.slice_sequence(
        torch.from_numpy(real[rows]), group, dim=1, load_balance=load_balance
    )
    q_l, k_l, v_l = (local[key].requires_grad_() for key in "qkv")
    before = dict(context.COUNTS)
    out = context.context_attention(
        q_l, k_l, v_l,
        positions=positions, key_padding_mask=real_local, is_causal=causal, method=method,
        chunks=2 if load_balance else 1, group=group, block_q=BLOCK, block_k=BLOCK,
    )  # fmt: skip
    forward = {key: n - before.get(key, 0) for key, n in context.COUNTS.items()}
    before = dict(context.COUNTS)
    (out * local["w"]).sum().backward()
    backward = {key: n - before.get(key, 0) for key, n in context.COUNTS.items()}
    np.savez(
        Path(folder) / f"{name}-{rank}.npz",
        rows=np.arange(B)[rows],
        heads=np.arange(H)[heads],
        seq_rank=mesh["seq"].get_local_rank(),
        positions=positions.numpy(),
        out=out.detach().numpy(),
        dq=q_l.grad.numpy(),
        dk=k_l.grad.numpy(),
        dv=v_l.grad.numpy(),
        **{f"forward_{key}": n for key, n in forward.items()},
        **{f"backward_{key}": n for key, n in backward.items()},
    )


def run_cases(rank: int, folder: str, seq: int) -> None:
    """Every (method, load balancing, causality) case on a seq mesh of all the processes;
    with 4 processes also data=2 x seq=2 and model=2 x seq=2, and the work of each rank
    under causal attention with and without load balancing (T = 32, no padding)."""
    mesh = parallel.make_mesh(seq=seq)
    for method, load_balance, causal in CASES:
        name = case_name(method, load_balance, causal)
        _attend(folder, rank, mesh, name, method, load_balance, causal)
    for load_balance in (False, True):
        name = f"work-{'lb' if load_balance else 'plain'}"
        _attend(folder, rank, mesh, name, "ring", load_balance, True, t=32, ragged=False)
    _bad_inputs(folder, rank, mesh, seq)
    for name, (config, method, load_balance, causal, sizes) in MODEL_CASES.items():
        if seq in sizes:
            _encoder(folder, rank, mesh, name, CONFIGS[config], method, load_balance, causal)
    if seq == 4:
        for data, model in ((2, 1), (1, 2)):
            mesh = parallel.make_mesh(data=data, model=model, seq=2)
            name = f"data{data}-model{model}-seq2"
            _attend(folder, rank, mesh, name, "ring", True, True)


def _bad_inputs(folder: str, rank: int, mesh, seq: int) -> None:
    """The ValueError of each bad split or argument, written down for the test."""
    group = mesh["seq"].get_group()
    x = torch.zeros(B, H, 2 * seq + 2, HD)
    ids = np.zeros((B, T // seq), dtype=np.int64)  # this rank's rows
    whole = np.ones((1, 1, T // seq, T // seq), dtype=bool)
    positions = torch.arange(2)
    cases = {
        "split": lambda: context.slice_sequence(x, group, dim=2, load_balance=True),
        "method": lambda: context.context_attention(
            x[:, :, :2], x[:, :, :2], x[:, :, :2], positions=positions, method="tree"
        ),
        "positions": lambda: context.ring_attention(
            x[:, :, :2], x[:, :, :2], x[:, :, :2], positions=torch.arange(3), group=group
        ),
        "mesh": lambda: parallel.make_mesh(seq=2 * seq),
        "weights": lambda: _parallel_encoder(MODEL, mesh)(ids, return_attention=True),
        "general_mask": lambda: _parallel_encoder(MODEL, mesh)(ids, mask=whole),
        "pad_positions": lambda: _parallel_encoder(ROBERTA, mesh)(ids),
        "fsdp": lambda: _parallel_encoder(MODEL, mesh, fsdp=True),
        "context": lambda: _parallel_encoder(MODEL, mesh, context="tree"),
    }
    messages = {}
    for name, case in cases.items():
        try:
            case()
        except ValueError as error:
            messages[name] = str(error)
    if rank == 0:
        np.savez(Path(folder) / "errors.npz", **messages)


def _encoder(folder, rank, mesh, name, cfg, method, load_balance, causal):
    """A whole encoder parallelized on ``mesh``: this rank's rows of the output, and (rank 0)
    every parameter's gradient of sum(h * w) (summed over the seq group by parallelize's
    hooks)."""
    ids, mask, w = model_inputs(cfg)
    model = from_weights(model_weights(cfg), cfg)
    parallel.parallelize(model, mesh, context=method, load_balance=load_balance)
    local = parallel.slice_sequence(
        {"ids": ids, "mask": mask, "w": w}, mesh, load_balance=load_balance
    )
    before = dict(context.COUNTS)
    h = model(local["ids"], local["mask"], is_causal=causal)  # (B, T/W, D)
    forward = context.COUNTS["bytes"] - before.get("bytes", 0)
    (h * torch.from_numpy(local["w"])).sum().backward()
    backward = context.COUNTS["bytes"] - before.get("bytes", 0) - forward
    seq, seq_rank = mesh["seq"].size(), mesh["seq"].get_local_rank()
    grads = {f"grad:{n}": p.grad.numpy() for n, p in model.named_parameters()}
    np.savez(
        Path(folder) / f"{name}-{rank}.npz",
        positions=plan.seq_positions(T, seq, seq_rank, load_balance=load_balance),
        h=h.detach().numpy(),
        forward_bytes=forward,
        backward_bytes=backward,
        **(grads if rank == 0 else {}),
    )


def _parallel_encoder(cfg, mesh, **options):
    return parallel.parallelize(from_weights(model_weights(cfg), cfg), mesh, **options)
