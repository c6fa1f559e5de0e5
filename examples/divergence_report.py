"""Run one checkpoint (or a random model) in both frameworks and show, layer by layer, how
far apart their hidden states and attention weights are, under three precision settings.

    python -m examples.divergence_report --out out/divergence
    python -m examples.divergence_report --checkpoint model.safetensors --out out/divergence
    python -m examples.divergence_report --hf FOLDER --out out/divergence   # any shared.hf family

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
The comparison itself is ``shared.divergence``, which the parity tests can reuse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import jax_impl.precision
import torch_impl
import torch_impl.precision
from shared import reference
from shared import weights as v1
from shared.config import ACTIVATIONS, EncoderConfig
from shared.divergence import LayerDiff, compare_layers, first_divergence, format_table
from shared.tolerances import tolerance

__all__ = ["MODES", "compare_frameworks", "main", "parse_args", "precision_scope"]

MODES = ("float32-highest", "float32-default", "bfloat16")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a format-v1 .safetensors file")
    p.add_argument(
        "--hf",
        type=Path,
        help="a Hugging Face folder of any family shared.hf reads (a ViT gets random images)",
    )
    p.add_argument("--out", type=Path, default=Path("out/divergence"), help="output folder")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--seed", type=int, default=0, help="random weights and inputs")
    inputs = p.add_argument_group("inputs")
    inputs.add_argument("--batch", type=int, default=4)
    inputs.add_argument("--seq-len", type=int, default=32)
    inputs.add_argument(
        "--pad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sequences of different lengths (padding is left out of the comparison)",
    )
    model = p.add_argument_group("model (without --checkpoint: random weights)")
    model.add_argument("--vocab-size", type=int, default=1000)
    model.add_argument("--d-model", type=int, default=128)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--layers", type=int, default=6)
    model.add_argument("--d-ff", type=int, default=512)
    model.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    model.add_argument("--norm-first", action="store_true")
    return p.parse_args(argv)


def model_from_args(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], EncoderConfig]:
    """``(format-v1 weights, config)``: the checkpoint's, or random non-trivial weights."""
    if args.checkpoint is not None:
        return v1.load_file(args.checkpoint)
    if args.hf is not None:
        from shared import hf

        return hf.load(args.hf)
    cfg = EncoderConfig(
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
    return reference.init_weights(cfg, seed=args.seed), cfg


def make_inputs(
    cfg: EncoderConfig, batch: int, seq_len: int, *, pad: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(input_ids (B, T), attention_mask (B, T))``; the first row is never padded.

    Pads carry ``position_pad_id`` where the config has one (RoBERTa), as tokenizers write
    them. A ViT gets random images (B, C, H, W) in place of the ids, and an all-ones mask.
    """
    rng = np.random.default_rng(seed)
    if cfg.image_size:
        shape = (batch, cfg.num_channels, cfg.image_size, cfg.image_size)
        return rng.standard_normal(shape).astype(np.float32), np.ones((batch, cfg.max_len))
    low = 0 if cfg.position_pad_id is None else cfg.position_pad_id + 1
    ids = rng.integers(low, cfg.vocab_size, size=(batch, seq_len))
    lengths = rng.integers(1, seq_len + 1, size=batch) if pad else np.full(batch, seq_len)
    lengths[0] = seq_len
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    return np.where(mask == 1, ids, max(low - 1, 0)), mask


@contextlib.contextmanager
def precision_scope(mode: str) -> Iterator[None]:
    """Set both frameworks' matmul precision (and JAX's dtype promotion) for ``mode``."""
    # float32-default: each framework's own defaults (JAX's: the platform's).
    precision = "default" if mode == "float32-default" else "float32"
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_impl.precision.matmul_precision(precision))
        stack.enter_context(jax_impl.precision.matmul_precision(precision))
        if mode == "bfloat16":  # Flax's LayerNorm promotes bfloat16 with float32
            stack.enter_context(jax.numpy_dtype_promotion("standard"))
        yield


def _numpy(x: torch.Tensor | jax.Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(jnp.asarray(x, dtype=jnp.float32))


def compare_frameworks(
    weights: dict[str, np.ndarray],
    cfg: EncoderConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    mode: str,
    *,
    device: str = "cpu",
) -> tuple[list[LayerDiff], list[LayerDiff]]:
    """Run both models under ``mode``: ``(hidden-state diffs (N + 1), attention diffs (N))``.

    JAX is the "actual" and PyTorch the "expected" side; real tokens only (padded query
    positions are computed but meaningless, and padded keys have weight 0 in both).
    """
    dtype = "bfloat16" if mode == "bfloat16" else "float32"
    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    with precision_scope(mode), jax.default_device(jax.devices(device)[0]):
        tm = torch_impl.from_weights(
            weights, cfg, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        ).to(torch_device)
        jm = jax_impl.from_weights(
            weights, cfg, dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
        )
        with torch.no_grad():
            _, attn_t, hidden_t = tm(
                **_arguments(cfg, input_ids, attention_mask, torch.as_tensor, torch_device),
                return_attention=True,
                return_hidden_states=True,
            )
        _, attn_j, hidden_j = jm(
            **_arguments(cfg, input_ids, attention_mask, lambda a, device: jnp.asarray(a), None),
            return_attention=True,
            return_hidden_states=True,
        )
        hidden_j, attn_j = [_numpy(h) for h in hidden_j], [_numpy(a) for a in attn_j]
    real = attention_mask.astype(bool)  # (B, T)
    hidden = compare_layers(
        hidden_j, [_numpy(h) for h in hidden_t], name="hidden_states", where=real[:, :, None]
    )
    attention = compare_layers(
        attn_j, [_numpy(a) for a in attn_t], name="attention", where=real[:, None, :, None]
    )
    return hidden, attention


def _arguments(cfg: EncoderConfig, inputs, mask, convert, device) -> dict:
    """The model call's keyword arguments: a ViT takes pixels, a text model ids and a mask."""
    if cfg.image_size:
        return {"pixel_values": convert(inputs, device=device)}
    return {
        "input_ids": convert(inputs, device=device),
        "attention_mask": convert(mask, device=device),
    }


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
    weights, cfg = model_from_args(args)
    seq_len = min(args.seq_len, cfg.max_len) if cfg.positional == "learned" else args.seq_len
    ids, mask = make_inputs(cfg, args.batch, seq_len, pad=args.pad, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    source = str(args.checkpoint or args.hf or f"random weights (seed {args.seed})")
    print(
        f"{source}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads; "
        f"inputs {ids.shape}, {int(mask.sum())} real tokens; device {args.device}"
    )
    results, summary = {}, {}
    for mode in args.modes:
        hidden, attention = compare_frameworks(weights, cfg, ids, mask, mode, device=args.device)
        results[mode] = (hidden, attention)
        tol = tolerance("bfloat16" if mode == "bfloat16" else "float32", args.device)
        by_depth = [hidden[0]] + [
            d for pair in zip(attention, hidden[1:], strict=True) for d in pair
        ]
        first = first_divergence(by_depth, tol)
        print(f"\n{mode}")
        print(format_table(hidden, attention))
        print(
            "  all within the tolerance table"
            if first is None
            else f"  first out of tolerance (atol {tol.atol:g}, rtol {tol.rtol:g}): {first.name}, "
            f"max abs {first.max_abs:.3e} at {first.worst_index}"
        )
        summary[mode] = {
            "hidden_states": [vars(d) | {"max_rel": d.max_rel} for d in hidden],
            "attention": [vars(d) | {"max_rel": d.max_rel} for d in attention],
            "first_out_of_tolerance": None if first is None else first.name,
        }
    (args.out / "divergence.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "divergence.png", f"JAX vs PyTorch, layer by layer: {source}")
    print(f"\nwrote {args.out / 'divergence.png'}, {args.out / 'divergence.json'}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
