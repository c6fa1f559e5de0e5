"""Run one checkpoint (or a random model) in both frameworks and show, layer by layer, how
far apart their hidden states and attention weights are, under three precision settings.

    python -m examples.divergence_report --out out/divergence
    python -m examples.divergence_report --checkpoint model.safetensors --out out/divergence
    python -m examples.divergence_report --hf FOLDER --out out/divergence   # any shared.hf family

``--checkpoint`` takes a checkpoint of format 1, 2 or 3. To gate a CI job on one checkpoint, or
to compare a Hugging Face folder against transformers too, use ``twin-encoder check PATH``:
this script is its study companion, with all three settings and a plot.

Settings (``MODES``):

* ``float32-highest``: float32 with full-precision matmuls in both frameworks (what the
  parity tests use): differences are rounding, ~1e-7 relative.
* ``float32-default``: float32 with each framework's defaults. JAX multiplies float32 in
  TF32 on recent NVIDIA GPUs and in bfloat16 passes on TPU; PyTorch keeps true float32
  matmuls. On a CPU both are exact float32, so this matches the first row there.
* ``bfloat16``: both models in bfloat16 (~3 significant digits), compared with each other.
  JAX runs under standard dtype promotion, which Flax's LayerNorm needs for bfloat16.

Prints one table per setting and the first layer out of the tolerance table's bound, and
writes ``DIR/divergence.png`` (relative difference against depth) and ``DIR/divergence.json``.
The comparison itself is ``twin_encoder.check`` (over ``shared.divergence``).

Exit status: 0 every layer within the tolerance table under every setting run; 1 some layer
outside it (on a GPU or TPU, expect float32-default to be); 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.cli import ArgumentParser, fail, with_option_names
from shared.config import ACTIVATIONS, EncoderConfig
from shared.divergence import LayerDiff, format_table
from shared.tolerances import tolerance
from twin_encoder.check import DEVICES, MODES, make_inputs

__all__ = ["MODES", "main", "parse_args", "plot", "run"]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m examples.divergence_report",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, help="a checkpoint (.safetensors, format 1 to 3)"
    )
    source.add_argument(
        "--hf",
        type=Path,
        help="a Hugging Face folder of any family shared.hf reads (a ViT gets random images)",
    )
    p.add_argument("--out", type=Path, default=Path("out/divergence"), help="output folder")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cpu, gpu, tpu, or auto (the first of gpu, tpu, cpu present); PyTorch runs on the "
        "CPU for a TPU",
    )
    p.add_argument("--seed", type=int, default=0, help="random weights and inputs")
    inputs = p.add_argument_group("inputs")
    inputs.add_argument("--batch", type=_positive_int, default=4)
    inputs.add_argument("--seq-len", type=_positive_int, default=32)
    inputs.add_argument(
        "--pad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sequences of different lengths (padding is left out of the comparison)",
    )
    model = p.add_argument_group("model (without --checkpoint or --hf: random weights)")
    model.add_argument("--vocab-size", type=_positive_int, default=1000)
    model.add_argument("--d-model", type=_positive_int, default=128)
    model.add_argument("--heads", type=_positive_int, default=4)
    model.add_argument("--layers", type=_positive_int, default=6)
    model.add_argument("--d-ff", type=_positive_int, default=512)
    model.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    model.add_argument("--norm-first", action="store_true")
    args = p.parse_args(argv)
    problem = _check_args(args)
    if problem:
        p.exit(2, f"error: {problem}\n")
    return args


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, before anything heavy is imported; None if nothing."""
    if args.checkpoint is not None and not args.checkpoint.is_file():
        what = "is a folder" if args.checkpoint.is_dir() else "does not exist"
        return f"--checkpoint {args.checkpoint} {what}; expected a .safetensors file"
    if args.hf is not None and not (args.hf / "config.json").is_file():
        what = "has no config.json" if args.hf.is_dir() else "is not a folder"
        return f"--hf {args.hf} {what}; expected a Hugging Face model folder"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} is a file; expected a folder"
    if args.checkpoint is None and args.hf is None:
        try:
            _random_config(args)
        except ValueError as e:
            return with_option_names(str(e), OPTIONS)
    return None


# EncoderConfig field -> the option that sets it, for error messages
OPTIONS = {
    "vocab_size": "--vocab-size",
    "d_model": "--d-model",
    "n_heads": "--heads",
    "n_layers": "--layers",
    "d_ff": "--d-ff",
    "max_len": "--seq-len",
}


def _random_config(args: argparse.Namespace) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=args.vocab_size,
        d_model=args.d_model,
        n_heads=args.heads,
        d_ff=args.d_ff,
        n_layers=args.layers,
        max_len=max(128, args.seq_len),
        dropout=0.0,
        activation=args.activation,
        norm_first=args.norm_first,
        final_norm=args.norm_first,
    )


def model_from_args(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], EncoderConfig]:
    """``(format-v1 weights, config)``: the checkpoint's, or random non-trivial weights."""
    from twin_encoder.check import load_model

    if args.checkpoint is not None or args.hf is not None:
        weights, cfg, _ = load_model(args.checkpoint or args.hf)
        return weights, cfg
    from shared import reference

    cfg = _random_config(args)
    return reference.init_weights(cfg, seed=args.seed), cfg


def plot(
    results: dict[str, tuple[list[LayerDiff], list[LayerDiff]]], path: Path, title: str
) -> None:
    """Relative difference (log) against depth: solid hidden states, dashed attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-9  # exact zeros cannot be drawn on a log axis (float32 rounding is ~6e-8)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for k, (mode, (hidden, attention)) in enumerate(results.items()):
        depth = np.arange(len(hidden))
        rel_h = np.maximum([d.max_rel for d in hidden], floor)
        rel_a = np.maximum([d.max_rel for d in attention], floor)
        # Thinner lines and smaller markers for later modes, so that equal curves stay visible.
        style = {"color": colors[mode], "lw": 3.0 - k, "ms": 9 - 2 * k}
        ax.plot(depth, rel_h, "o-", label=f"{mode}: hidden states", **style)
        ax.plot(depth[1:], rel_a, "s--", label=f"{mode}: attention weights", **style)
        dtype = "bfloat16" if mode == "bfloat16" else "float32"
        ax.axhline(tolerance(dtype).rtol, color=colors[mode], lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks(depth, ["emb"] + [str(i) for i in depth[1:]])
    ax.set_xlabel("depth (emb = embeddings, then encoder layer)")
    ax.set_ylabel("max |JAX - PyTorch| / max |PyTorch|")
    ax.set_title(f"{title}\n(dotted: the tolerance table's rtol; exact zeros drawn at {floor:g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from twin_encoder.check import compare, resolve_device, run_model

    device = resolve_device(args.device)
    weights, cfg = model_from_args(args)
    ids, mask = make_inputs(cfg, args.batch, args.seq_len, pad=args.pad, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    source = str(args.checkpoint or args.hf or f"random weights (seed {args.seed})")
    print(
        f"{source}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads; "
        f"inputs {ids.shape}, {int(mask.sum())} real tokens; device {device}"
    )
    results, summary = {}, {}
    for mode in args.modes:
        outputs = {
            framework: run_model(
                framework,
                weights,
                cfg,
                ids,
                mask,
                mode,
                device="cpu" if framework == "torch" and device == "tpu" else device,
            )
            for framework in ("torch", "jax")
        }
        c = compare(
            outputs["jax"], outputs["torch"], mask, names=("jax", "torch"), mode=mode, device=device
        )
        results[mode] = (c.hidden, c.attention)
        first, tol = c.first_out_of_tolerance, c.tolerance
        print(f"\n{mode}")
        print(format_table(c.hidden, c.attention))
        print(
            "  all within the tolerance table"
            if first is None
            else f"  first out of tolerance (atol {tol.atol:g}, rtol {tol.rtol:g}): {first.name}, "
            f"max abs {first.max_abs:.3e} at {first.worst_index}"
        )
        summary[mode] = {
            "hidden_states": [vars(d) | {"max_rel": d.max_rel} for d in c.hidden],
            "attention": [vars(d) | {"max_rel": d.max_rel} for d in c.attention],
            "first_out_of_tolerance": None if first is None else first.name,
        }
    (args.out / "divergence.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "divergence.png", f"JAX vs PyTorch, layer by layer: {source}")
    print(f"\nwrote {args.out / 'divergence.png'}, {args.out / 'divergence.json'}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when every layer is within the tolerance table, 1 when one is not."""
    args = parse_args(argv)
    try:
        summary = run(args)
    except ValueError as e:  # an absent device, a checkpoint or folder that is refused
        return fail(str(e))
    inside = all(mode["first_out_of_tolerance"] is None for mode in summary.values())
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
