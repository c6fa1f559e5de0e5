"""What each activation-checkpointing policy keeps for the backward, in both frameworks.

    python -m studies.remat [--config bert-base] [--batch 1] [--seq-len 2048]

For each attention backend and each ``remat`` policy (``shared.backends.REMATS``), side by side:

* JAX: the temporaries of XLA's buffer plan for the jitted loss-and-gradient
  (``studies.memory_plan.plan``): activations kept for the backward plus scratch, as the
  compiler assigns them, under XLA:CPU's default (concurrency-optimised) scheduler and under
  its memory-optimised one (``jax_impl.train.compiler_options``), and the dot ops of the
  first. No run: the figures are the compiler's plan.
* PyTorch: the bytes of the distinct tensors autograd saves for the backward during one
  forward with gradients (``torch.autograd.graph.saved_tensors_hooks``), plus the inputs a
  checkpointed call keeps to recompute itself (``torch.utils.checkpoint`` holds them outside
  the saved-tensor mechanism), parameters excluded. Activations only: no scratch.

Both are given in ``d_model``-wide float32 vectors per token per layer: bytes / (B T N D 4).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import jax_impl.train
import torch_impl
from benchmarks.suites import load_config
from shared.backends import REMATS
from studies import memory_plan


def torch_saved(cfg, backend: str, remat: str, batch: int, seq_len: int) -> int:
    """Bytes PyTorch keeps for the backward of one forward: distinct saved tensors plus the
    inputs of checkpointed calls, parameters and buffers excluded (counted per storage)."""
    torch.manual_seed(0)
    model = torch_impl.TransformerEncoder(cfg, backend=backend, remat=remat).eval()
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len)))
    fixed = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}

    def keep(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in fixed:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    def pack(t):
        keep(t)
        return t

    checkpointed = {
        "none": [],
        "block": list(model.encoder.layers),
        "attention": [layer.attention for layer in model.encoder.layers],
    }[remat]

    def keep_inputs(_, args, kwargs):
        for a in (*args, *kwargs.values()):
            keep(a)

    hooks = [m.register_forward_pre_hook(keep_inputs, with_kwargs=True) for m in checkpointed]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return sum(kept.values())


def jax_plan(cfg, backend: str, remat: str, batch: int, seq_len: int) -> int:
    """Bytes of temporaries in XLA's plan of jit(value_and_grad(loss)) with ``remat``."""
    return memory_plan.plan(cfg, backend, batch, seq_len, remat=remat)["temporaries"]


def jax_dots(cfg, backend: str, remat: str, batch: int, seq_len: int) -> int:
    """Dot ops in XLA's optimised program of jit(value_and_grad(loss)) with ``remat``:
    recomputation shows as more matmuls, unless XLA merged it away."""
    return _dots(memory_plan.compiled(cfg, backend, batch, seq_len, remat=remat))


def _dots(compiled) -> int:
    return compiled.as_text().count(" dot(")


def main(argv: list[str] | None = None) -> None:
    import jax

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert-base", help="preset or JSON file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--backends", default="math,flash")
    parser.add_argument("--remat", default=",".join(REMATS), help=f"from {','.join(REMATS)}")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config(args.config)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
    unit = args.batch * args.seq_len * cfg.n_layers * cfg.d_model * 4
    print(
        f"config {args.config}, B={args.batch}, T={args.seq_len}, float32, "
        f"jax {jax.__version__}, torch {torch.__version__}"
    )
    print("d_model-wide float32 vectors per token per layer (MiB in brackets)")
    print(
        f"{'backend':8s}{'remat':10s}{'JAX: XLA temporaries':>30s}{'dot ops':>9s}"
        f"{'memory scheduler':>28s}{'PyTorch: saved tensors':>32s}"
    )
    memory = jax_impl.train.compiler_options("cpu")
    for backend in args.backends.split(","):
        for remat in args.remat.split(","):
            compiled = memory_plan.compiled(cfg, backend, args.batch, args.seq_len, remat=remat)
            plan, dots = compiled.memory_analysis().temp_size_in_bytes, _dots(compiled)
            ordered = (
                memory_plan.compiled(
                    cfg, backend, args.batch, args.seq_len, remat=remat, options=memory
                )
                .memory_analysis()
                .temp_size_in_bytes
            )
            saved = torch_saved(cfg, backend, remat, args.batch, args.seq_len)
            print(
                f"{backend:8s}{remat:10s}"
                f"{plan / unit:16.1f} ({plan / 2**20:7,.0f} MiB){dots:9d}"
                f"{ordered / unit:14.1f} ({ordered / 2**20:7,.0f} MiB)"
                f"{saved / unit:18.1f} ({saved / 2**20:7,.0f} MiB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
