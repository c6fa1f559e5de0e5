"""Train one model in PyTorch and in JAX from the same weights on the same batches, and compare.

    python -m examples.train_side_by_side --task first_last --out out/first_last
    python -m examples.train_side_by_side --task seen_before --out out/seen_before

Both start from the same initial weights (built in PyTorch, transferred to JAX), see the same
batches (``shared.data``), and use the same optimizer, schedule, clipping and accumulation
(``shared.training``). Writes ``DIR/losses.json`` (one loss per optimizer update),
``DIR/loss_curves.png`` (both curves, and their absolute difference on a log axis) and
``DIR/summary.json``; prints the final accuracy and the time per step of each framework.

Both frameworks run float32 matmuls at full precision (JAX would use TF32 on recent NVIDIA
GPUs). The curves agree to ~1e-6 at first. While a model learns fast, training amplifies
rounding differences: with the defaults, seen_before's curves part (to ~1e-2) around steps
75-150, exactly as PyTorch does against itself when only its attention kernel changes
(math vs fused: ~5e-3 by step 150). The difference plot shows when it happens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.cli import ArgumentParser, with_option_names
from shared.config import EncoderConfig
from shared.data import TASKS, Dataset, TaskConfig, majority_accuracy
from shared.training import POOLINGS, TrainConfig

if TYPE_CHECKING:  # imported where they run, so that --help and usage errors answer at once
    import jax_impl.train as jt
    import torch_impl.train as tt

__all__ = ["main", "parse_args", "plot_losses", "run"]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


# config field -> the option that sets it, for error messages
OPTIONS = {
    "total_steps": "--steps",
    "warmup_steps": "--warmup",
    "batch_size": "--batch-size",
    "accumulation_steps": "--accumulation",
    "learning_rate": "--lr",
    "max_grad_norm": "--max-grad-norm",
    "weight_decay": "--weight-decay",
    "vocab_size": "--vocab-size",
    "seq_len": "--seq-len",
    "d_model": "--d-model",
    "n_heads": "--heads",
    "n_layers": "--layers",
    "d_ff": "--d-ff",
    "dropout": "--dropout",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (the configs they make included) before anything heavy
    is imported; a mistake exits with status 2 and one line."""
    p = ArgumentParser(
        prog="python -m examples.train_side_by_side",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--task", choices=TASKS, default="first_last")
    p.add_argument(
        "--steps", type=_positive_int, default=1500, help="optimizer updates (default 1500)"
    )
    p.add_argument("--out", type=Path, default=Path("out/train"), help="output folder")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data")
    model = p.add_argument_group("model")
    model.add_argument("--d-model", type=int, default=64)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--d-ff", type=int, default=128)
    model.add_argument("--dropout", type=float, default=0.0, help="0 keeps the curves comparable")
    model.add_argument(
        "--norm-first", action="store_true", help="pre-norm layers (and a final LayerNorm)"
    )
    model.add_argument("--pooling", choices=POOLINGS, default="first", help="first_last only")
    data = p.add_argument_group("data")
    data.add_argument("--vocab-size", type=int, default=16)
    data.add_argument("--seq-len", type=int, default=16)
    data.add_argument("--eval-batches", type=int, default=4, help="of 256 sequences")
    opt = p.add_argument_group("optimizer")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    opt.add_argument(
        "--warmup", type=int, default=None, help="warmup steps (default: min(100, steps // 10))"
    )
    opt.add_argument("--batch-size", type=int, default=32, help="per micro-batch")
    opt.add_argument("--accumulation", type=int, default=1, help="micro-batches per update")
    opt.add_argument("--max-grad-norm", type=float, default=1.0)
    opt.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: PyTorch's choice); XLA sizes its own pool",
    )
    p.add_argument("--log-every", type=int, default=0, help="progress lines (default: ~10)")
    args = p.parse_args(argv)
    try:
        configs(args)
    except ValueError as e:  # the configs name their fields: name the options instead
        p.exit(2, f"error: {with_option_names(str(e), OPTIONS)}\n")
    problems = [
        f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= {low}"
        for name, low in (("eval_batches", 1), ("log_every", 0), ("torch_threads", 1))
        if getattr(args, name) is not None and getattr(args, name) < low
    ]
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out {args.out} is a file; expected a folder")
    if problems:
        p.exit(2, f"error: {problems[0]}\n")
    return args


def configs(args: argparse.Namespace) -> tuple[TaskConfig, EncoderConfig, TrainConfig]:
    task = TaskConfig(task=args.task, vocab_size=args.vocab_size, seq_len=args.seq_len)
    cfg = EncoderConfig(
        vocab_size=task.vocab_size,
        d_model=args.d_model,
        n_heads=args.heads,
        d_ff=args.d_ff,
        n_layers=args.layers,
        max_len=task.seq_len,
        dropout=args.dropout,
        norm_first=args.norm_first,
        final_norm=args.norm_first,
    )
    train = TrainConfig(
        learning_rate=args.lr,
        warmup_steps=min(100, args.steps // 10) if args.warmup is None else args.warmup,
        total_steps=args.steps,
        batch_size=args.batch_size,
        accumulation_steps=args.accumulation,
        max_grad_norm=args.max_grad_norm,
        weight_decay=args.weight_decay,
    )
    return task, cfg, train


def train_loop(
    name: str,
    trainer: tt.Trainer | jt.Trainer,
    micro_batches: list[list[dict[str, np.ndarray]]],
    log_every: int,
) -> tuple[list[float], float, float]:
    """Run every update: ``(losses, seconds of the first step, seconds per later step)``.

    The first step is timed apart: it includes JAX's compilation and PyTorch's warm-up.
    """
    losses = []
    start = time.perf_counter()
    first = later_start = 0.0
    for i, batches in enumerate(micro_batches):
        lr = trainer.learning_rate
        loss, grad_norm = trainer.step(batches)
        losses.append(loss)
        if i == 0:
            later_start = time.perf_counter()
            first = later_start - start
        if (i + 1) % log_every == 0 or i + 1 == len(micro_batches):
            done = max(i, 1)
            per_step = (time.perf_counter() - later_start) / done if i else first
            print(
                f"  [{name:5}] step {i + 1:5}/{len(micro_batches)}  loss {loss:.4f}  "
                f"|g| {grad_norm:6.3f}  lr {lr:.2e}  {per_step * 1e3:6.2f} ms/step",
                flush=True,
            )
    n_later = len(micro_batches) - 1
    per_step = (time.perf_counter() - later_start) / n_later if n_later else first
    return losses, first, per_step


def plot_losses(losses: dict[str, list[float]], path: Path, title: str) -> None:
    """Both loss curves (log scale), and |torch - jax| per step on a second, log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, j = np.asarray(losses["torch"]), np.asarray(losses["jax"])
    steps = np.arange(1, len(t) + 1)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 6), gridspec_kw={"height_ratios": [2, 1]}
    )
    top.plot(steps, t, label="PyTorch", color="tab:red", lw=1.5)
    top.plot(steps, j, label="JAX / Flax", color="tab:blue", lw=1.0, ls="--")
    top.set_yscale("log")
    top.set_ylabel("training loss (cross-entropy)")
    top.legend()
    top.grid(True, which="both", alpha=0.3)
    top.set_title(title)
    diff = np.abs(t - j)
    bottom.plot(steps, np.where(diff > 0, diff, np.nan), color="black", lw=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("|PyTorch - JAX|")
    bottom.set_xlabel("optimizer step")
    bottom.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace, *, log: Callable[[str], None] = print) -> dict:
    """Train both, write the files, and return the summary."""
    import jax
    import torch
    from flax import nnx

    import jax_impl.precision
    import jax_impl.train as jt
    import torch_impl.precision
    import torch_impl.train as tt

    task, cfg, train = configs(args)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    jax_impl.precision.set_matmul_precision("float32")
    torch_impl.precision.set_matmul_precision("float32")
    args.out.mkdir(parents=True, exist_ok=True)

    # The same initial weights: built in PyTorch (seeded), transferred to JAX.
    torch.manual_seed(args.seed)
    torch_model = tt.build_model(cfg, task, pooling=args.pooling)
    jax_model = jt.build_model(cfg, task, pooling=args.pooling, rngs=nnx.Rngs(args.seed))
    jt.import_task_weights(jax_model, tt.export_task_weights(torch_model))

    # The same batches, generated once up front so that the timings cover training only.
    data = Dataset(task, batch_size=train.batch_size, seed=args.seed)
    a = train.accumulation_steps
    micro_batches = [data.batches(i * a, a) for i in range(train.total_steps)]
    eval_data = Dataset(task, batch_size=256, seed=args.seed, split="eval")
    eval_batches = eval_data.batches(0, args.eval_batches)

    log(
        f"task {task.task}: {_plural(cfg.n_layers, 'layer')}, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"d_ff {cfg.d_ff}; {train.total_steps} steps of {a} x {train.batch_size} sequences; "
        f"torch threads {torch.get_num_threads()}, JAX on {jax.devices()[0].platform}, "
        "float32 matmuls at full precision in both"
    )
    if cfg.dropout > 0:
        log("dropout > 0: each framework draws its own masks, so the curves differ from step 1")
    log_every = args.log_every or max(1, train.total_steps // 10)
    trainers = {
        "torch": tt.Trainer(torch_model, train),
        "jax": jt.Trainer(jax_model, train),
    }
    losses, timing = {}, {}
    for name, trainer in trainers.items():
        losses[name], first, per_step = train_loop(name, trainer, micro_batches, log_every)
        timing[name] = {"first_step_s": first, "ms_per_step": per_step * 1e3}

    accuracy = {
        "torch": tt.evaluate(trainers["torch"].model, eval_batches),
        "jax": jt.evaluate(trainers["jax"].model, eval_batches),
    }
    diff = np.abs(np.asarray(losses["torch"]) - np.asarray(losses["jax"]))
    summary = {
        "task": task.task,
        "model": cfg.to_dict(),
        "train": {k: getattr(train, k) for k in train.__dataclass_fields__},
        "accuracy": accuracy,
        "majority_baseline": majority_accuracy(eval_batches),
        "timing": timing,
        "torch_threads": torch.get_num_threads(),
        "max_loss_diff": float(diff.max()),
        "max_loss_diff_first_200": float(diff[:200].max()),
    }
    (args.out / "losses.json").write_text(json.dumps(losses))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_losses(
        losses,
        args.out / "loss_curves.png",
        f"{task.task}: {_plural(cfg.n_layers, 'layer')}, d_model {cfg.d_model}, "
        "same initial weights and batches",
    )

    log(f"eval accuracy (majority-class baseline {summary['majority_baseline']:.3f}):")
    for name in trainers:
        log(
            f"  {name:5}  accuracy {accuracy[name]:.4f}   {timing[name]['ms_per_step']:.2f} ms/step "
            f"(first step {timing[name]['first_step_s']:.2f} s)"
        )
    if len(diff) > 200:
        log(
            f"max |loss_torch - loss_jax|: {diff[:200].max():.2e} over the first 200 steps, "
            f"{diff.max():.2e} over all {len(diff)}"
        )
    else:
        log(f"max |loss_torch - loss_jax|: {diff.max():.2e} over all {len(diff)} steps")
    written = [args.out / name for name in ("losses.json", "summary.json", "loss_curves.png")]
    log(f"wrote {', '.join(str(path) for path in written)}")
    return summary


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
