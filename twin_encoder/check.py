"""Check a checkpoint's parity: run it in PyTorch and JAX (and transformers, for a Hugging Face
folder) and compare every layer against the tolerance table.

    twin-encoder check model.safetensors          # a checkpoint (format 1 or 2)
    twin-encoder check path/to/hf-folder          # config.json + model.safetensors
    twin-encoder check FOLDER --json report.json  # and the numbers as JSON

What is compared, on random inputs of ``--batch`` sequences of ``--seq-len`` tokens with
padding of different lengths (padded positions are left out; a ViT gets random images):

* PyTorch against JAX, under each ``--modes`` setting (default ``float32-highest``):
  ``float32-highest``, float32 with full-precision matmuls in both (what the parity tests
  use); ``float32-default``, each framework's own defaults (TF32 in JAX on recent NVIDIA
  GPUs, bfloat16 passes on TPUs: expect it to fail there); ``bfloat16``, both in bfloat16.
* For a Hugging Face folder, each framework against ``transformers.AutoModel`` with eager
  attention, at full float32 precision.

Each row of the table is one depth: the embeddings, then each layer's hidden state and
attention weights (B, H, T, T); the last layer's row is the encoder's output (after the
final norm, where the model has one, as transformers' ``last_hidden_state``). A row is within
tolerance when ``max |a - b| <= atol + rtol * max |b|`` with the row of
``shared.tolerances`` for the dtype and device.

Exit status: 0 every layer within the tolerance table; 1 some layer outside it (the first
such layer is named); 2 a usage error or a file that cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.cli import ArgumentParser, fail
from shared.config import EncoderConfig
from shared.divergence import LayerDiff, compare_layers, first_divergence, format_table
from shared.tolerances import Tolerance, tolerance

__all__ = [
    "DEVICES",
    "MODES",
    "Comparison",
    "Outputs",
    "Report",
    "check",
    "compare",
    "load_model",
    "main",
    "make_inputs",
    "parse_args",
    "precision_scope",
    "resolve_device",
    "run_model",
    "run_transformers",
]

MODES = ("float32-highest", "float32-default", "bfloat16")
DEVICES = ("cpu", "gpu", "tpu", "auto")
OUT_OF_TOLERANCE = 1


@dataclass(frozen=True)
class Outputs:
    """One model's per-depth outputs on one batch, as float NumPy arrays.

    ``hidden``: N + 1 arrays (B, T, D): the embeddings, layers 1..N-1, then the encoder's
    output (after the final norm where there is one). ``attention``: N arrays (B, H, T, T).
    """

    hidden: list[np.ndarray]
    attention: list[np.ndarray]


@dataclass(frozen=True)
class Comparison:
    """``actual`` against ``expected`` under one setting, layer by layer."""

    actual: str  # "jax", "torch"
    expected: str  # "torch", "transformers"
    mode: str  # one of MODES
    tolerance: Tolerance
    hidden: list[LayerDiff]  # N + 1
    attention: list[LayerDiff]  # N

    @property
    def title(self) -> str:
        return f"{self.actual} vs {self.expected}, {self.mode}"

    @property
    def first_out_of_tolerance(self) -> LayerDiff | None:
        """The shallowest hidden state or attention out of tolerance (errors grow with depth,
        so the first one is where to look)."""
        by_depth = [self.hidden[0]]
        for attention, hidden in zip(self.attention, self.hidden[1:], strict=True):
            by_depth += [attention, hidden]
        return first_divergence(by_depth, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_out_of_tolerance
        return {
            "actual": self.actual,
            "expected": self.expected,
            "mode": self.mode,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "hidden_states": [_diff_dict(d) for d in self.hidden],
            "attention": [_diff_dict(d) for d in self.attention],
            "first_out_of_tolerance": None if first is None else first.name,
            "within_tolerance": first is None,
        }


@dataclass(frozen=True)
class Report:
    """Everything ``check`` measured: the source, its config, the inputs and each comparison."""

    source: str
    kind: str  # "checkpoint" or "hf"
    config: EncoderConfig
    device: str
    input_shape: tuple[int, ...]
    real_tokens: int
    comparisons: list[Comparison]
    notes: tuple[str, ...] = ()  # what ran differently from what was asked, and why

    @property
    def within_tolerance(self) -> bool:
        return all(c.first_out_of_tolerance is None for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "config": self.config.to_dict(),
            "device": self.device,
            "inputs": {"shape": list(self.input_shape), "real_tokens": self.real_tokens},
            "comparisons": [c.to_dict() for c in self.comparisons],
            "notes": list(self.notes),
            "within_tolerance": self.within_tolerance,
        }

    def format(self) -> str:
        """The printed report: one table per comparison, each with its verdict."""
        cfg = self.config
        lines = [
            f"{self.source} ({self.kind}): {cfg.n_layers} layers, d_model {cfg.d_model}, "
            f"{cfg.n_heads} heads; inputs {self.input_shape}, {self.real_tokens} real tokens; "
            f"device {self.device}"
        ]
        lines += [f"note: {note}" for note in self.notes]
        for c in self.comparisons:
            tol = c.tolerance
            lines += ["", f"{c.title} (atol {tol.atol:g}, rtol {tol.rtol:g})"]
            lines.append(format_table(c.hidden, c.attention))
            first = c.first_out_of_tolerance
            lines.append(
                "  all within the tolerance table"
                if first is None
                else f"  OUT OF TOLERANCE from {first.name}: max abs {first.max_abs:.3e} "
                f"(bound {tol.atol + tol.rtol * first.scale:.3e}) at {first.worst_index}"
            )
        lines.append("")
        lines.append(
            "result: every layer within the tolerance table"
            if self.within_tolerance
            else "result: some layer is OUTSIDE the tolerance table"
        )
        return "\n".join(lines)


def _diff_dict(d: LayerDiff) -> dict[str, Any]:
    return {
        "name": d.name,
        "max_abs": d.max_abs,
        "max_rel": d.max_rel,
        "scale": d.scale,
        "worst_index": list(d.worst_index),
    }


# --- loading and inputs (NumPy only) --------------------------------------------------------


def load_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], EncoderConfig, str]:
    """``(format-v1 weights, config, kind)`` of a checkpoint file or a sharded checkpoint
    folder (kind ``"checkpoint"``) or a Hugging Face folder (kind ``"hf"``). Raises ``ValueError`` (unreadable or refused
    content, naming why) or ``FileNotFoundError``."""
    path = Path(path)
    if path.is_dir():
        from shared import hf, sharded

        if sharded.is_sharded(path):
            weights, cfg = sharded.load_weights(path)
            return weights, cfg, "checkpoint"

        weights, cfg = hf.load(path)
        return weights, cfg, "hf"
    from shared import weights as v1

    weights, cfg = v1.load_file(path)
    return weights, cfg, "checkpoint"


def make_inputs(
    cfg: EncoderConfig, batch: int, seq_len: int, *, pad: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(input_ids (B, T), attention_mask (B, T))``; the first row is never padded.

    Pads carry ``position_pad_id`` where the config has one (RoBERTa), as tokenizers write
    them; real ids start above it. A ViT gets random images (B, C, H, W) in place of the
    ids, and an all-ones mask over its N + 1 tokens. Learned position tables cap T.
    """
    rng = np.random.default_rng(seed)
    if cfg.image_size:
        shape = (batch, cfg.num_channels, cfg.image_size, cfg.image_size)
        return rng.standard_normal(shape).astype(np.float32), np.ones((batch, cfg.max_len))
    if cfg.positional == "learned":
        rows = cfg.max_len if cfg.position_pad_id is None else cfg.max_len - cfg.position_pad_id - 1
        seq_len = min(seq_len, rows)
    low = 0 if cfg.position_pad_id is None else cfg.position_pad_id + 1
    ids = rng.integers(low, cfg.vocab_size, size=(batch, seq_len))
    lengths = rng.integers(1, seq_len + 1, size=batch) if pad else np.full(batch, seq_len)
    lengths[0] = seq_len
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    pad_id = cfg.position_pad_id if cfg.position_pad_id is not None else 0
    return np.where(mask == 1, ids, pad_id), mask


# --- running the models ---------------------------------------------------------------------


def resolve_device(requested: str) -> str:
    """``cpu``, ``gpu`` or ``tpu``: ``auto`` is the first of gpu, tpu, cpu that JAX sees.

    Raises ``ValueError`` naming the devices present when ``requested`` is absent (a GPU
    also needs PyTorch to see CUDA).
    """
    import jax

    def present(kind: str) -> bool:
        try:
            return bool(jax.devices(kind))
        except RuntimeError:
            return False

    if requested == "auto":
        return next(k for k in ("gpu", "tpu", "cpu") if k == "cpu" or present(k))
    if requested not in DEVICES:
        raise ValueError(f"device {requested!r}: expected one of {', '.join(DEVICES)}")
    found = [k for k in ("cpu", "gpu", "tpu") if k == "cpu" or present(k)]
    if requested not in found:
        raise ValueError(
            f"--device {requested}: no {requested} here; devices present: {', '.join(found)}"
        )
    if requested == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device gpu: JAX sees a GPU but PyTorch has no CUDA build here")
    return requested


@contextlib.contextmanager
def precision_scope(mode: str) -> Iterator[None]:
    """Set both frameworks' matmul precision (and JAX's dtype promotion) for ``mode``."""
    import jax

    import jax_impl.precision
    import torch_impl.precision

    precision = "default" if mode == "float32-default" else "float32"
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_impl.precision.matmul_precision(precision))
        stack.enter_context(jax_impl.precision.matmul_precision(precision))
        if mode == "bfloat16":  # Flax's LayerNorm promotes bfloat16 with float32
            stack.enter_context(jax.numpy_dtype_promotion("standard"))
        yield


def _call_arguments(cfg: EncoderConfig, inputs: np.ndarray, mask: np.ndarray, convert) -> dict:
    """The model call's keyword arguments: a ViT takes pixels, a text model ids and a mask."""
    if cfg.image_size:
        return {"pixel_values": convert(inputs)}
    return {"input_ids": convert(inputs), "attention_mask": convert(mask)}


def _final(hidden: list[np.ndarray], h: np.ndarray) -> list[np.ndarray]:
    """The per-depth list: every hidden state but the last, then the encoder's output."""
    return [*hidden[:-1], h]


def run_model(
    framework: str,
    weights: dict[str, np.ndarray],
    cfg: EncoderConfig,
    inputs: np.ndarray,
    mask: np.ndarray,
    mode: str,
    *,
    device: str = "cpu",
) -> Outputs:
    """Build ``framework``'s model ("torch" or "jax") from ``weights`` and run it under ``mode``."""
    if framework == "torch":
        import torch

        import torch_impl

        dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
        torch_device = torch.device("cuda" if device == "gpu" else "cpu")
        with precision_scope(mode), torch.no_grad():
            model = torch_impl.from_weights(weights, cfg, dtype=dtype).to(torch_device)
            h, attention, hidden = model(
                **_call_arguments(
                    cfg, inputs, mask, lambda a: torch.as_tensor(a, device=torch_device)
                ),
                return_attention=True,
                return_hidden_states=True,
            )

        def numpy(x):
            return x.detach().float().cpu().numpy()

    elif framework == "jax":
        import jax
        import jax.numpy as jnp

        import jax_impl

        dtype = jnp.bfloat16 if mode == "bfloat16" else jnp.float32
        with precision_scope(mode), jax.default_device(jax.devices(device)[0]):
            model = jax_impl.from_weights(weights, cfg, dtype=dtype)
            h, attention, hidden = model(
                **_call_arguments(cfg, inputs, mask, jnp.asarray),
                return_attention=True,
                return_hidden_states=True,
            )

        def numpy(x):
            return np.asarray(jnp.asarray(x, dtype=jnp.float32))

    else:
        raise ValueError(f"framework {framework!r}: expected 'torch' or 'jax'")
    return Outputs(
        hidden=_final([numpy(x) for x in hidden], numpy(h)),
        attention=[numpy(a) for a in attention],
    )


def run_transformers(
    folder: str | os.PathLike,
    cfg: EncoderConfig,
    inputs: np.ndarray,
    mask: np.ndarray,
    *,
    device: str = "cpu",
) -> Outputs:
    """``transformers.AutoModel`` of ``folder`` (eager attention, float32, TF32 off) on the
    same inputs: hidden states but the last, then ``last_hidden_state``; attention weights."""
    import torch
    import transformers

    import torch_impl.precision

    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    # Quiet: the load report lists the pooler (a head this encoder does not hold) as
    # missing, and a progress bar counts the tensors.
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(
            str(folder), attn_implementation="eager", dtype=torch.float32
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    model = model.eval().to(torch_device)
    with torch_impl.precision.matmul_precision("float32"), torch.no_grad():
        out = model(
            **_call_arguments(cfg, inputs, mask, lambda a: torch.as_tensor(a, device=torch_device)),
            output_attentions=True,
            output_hidden_states=True,
        )

    def numpy(x):
        return x.detach().float().cpu().numpy()

    return Outputs(
        hidden=_final([numpy(x) for x in out.hidden_states], numpy(out.last_hidden_state)),
        attention=[numpy(a) for a in out.attentions],
    )


def compare(
    actual: Outputs,
    expected: Outputs,
    mask: np.ndarray,
    *,
    names: tuple[str, str],
    mode: str,
    device: str,
) -> Comparison:
    """Layer by layer, at real query positions only (padded queries are computed but
    meaningless; padded keys have weight 0 on both sides)."""
    real = mask.astype(bool)  # (B, T)
    dtype = "bfloat16" if mode == "bfloat16" else "float32"
    return Comparison(
        actual=names[0],
        expected=names[1],
        mode=mode,
        tolerance=tolerance(dtype, device),
        hidden=compare_layers(
            actual.hidden, expected.hidden, name="hidden_states", where=real[:, :, None]
        ),
        attention=compare_layers(
            actual.attention, expected.attention, name="attention", where=real[:, None, :, None]
        ),
    )


def check(
    path: str | os.PathLike,
    *,
    modes: Sequence[str] = ("float32-highest",),
    device: str = "cpu",
    batch: int = 4,
    seq_len: int = 32,
    pad: bool = True,
    seed: int = 0,
    with_transformers: bool = True,
) -> Report:
    """Run ``path`` (a checkpoint file or folder, or a Hugging Face folder) in both frameworks under each
    mode and, for a folder, against transformers; the :class:`Report` says whether every
    layer is within the tolerance table. ``device``: "cpu", "gpu" or "tpu" (PyTorch runs on
    the CPU for a TPU). Raises ``ValueError`` for a file or folder that cannot be read."""
    weights, cfg, kind = load_model(path)
    inputs, mask = make_inputs(cfg, batch, seq_len, pad=pad, seed=seed)
    notes = []
    if not cfg.image_size and inputs.shape[1] < seq_len:
        notes.append(
            f"ran at T={inputs.shape[1]}, not the {seq_len} asked: the learned position "
            f"table has room for {inputs.shape[1]} positions"
        )
    if cfg.image_size:
        notes.append(
            f"the sequence length is set by the images, not by the {seq_len} asked: "
            f"(C, H, W) = {inputs.shape[1:]} in patches of {cfg.patch_size} is {cfg.max_len} tokens"
        )
    torch_device = device if device != "tpu" else "cpu"
    comparisons, ours = [], {}

    def both(mode: str) -> dict[str, Outputs]:
        if mode not in ours:
            ours[mode] = {
                "torch": run_model("torch", weights, cfg, inputs, mask, mode, device=torch_device),
                "jax": run_model("jax", weights, cfg, inputs, mask, mode, device=device),
            }
        return ours[mode]

    for mode in modes:
        outputs = both(mode)
        comparisons.append(
            compare(
                outputs["jax"],
                outputs["torch"],
                mask,
                names=("jax", "torch"),
                mode=mode,
                device=device,
            )
        )
    if kind == "hf" and with_transformers:
        mode = "float32-highest"
        outputs = both(mode)
        reference = run_transformers(path, cfg, inputs, mask, device=torch_device)
        for framework in ("torch", "jax"):
            comparisons.append(
                compare(
                    outputs[framework],
                    reference,
                    mask,
                    names=(framework, "transformers"),
                    mode=mode,
                    device=device,
                )
            )
    return Report(
        source=str(path),
        kind=kind,
        config=cfg,
        device=device,
        input_shape=tuple(inputs.shape),
        real_tokens=int(mask.sum()),
        comparisons=comparisons,
        notes=tuple(notes),
    )


# --- the command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def build_parser(prog: str = "twin-encoder check") -> ArgumentParser:
    p = ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "path",
        type=Path,
        help="a checkpoint (.safetensors, format 1 to 3), a sharded checkpoint folder "
        "(save_sharded), or a Hugging Face folder (config.json + model.safetensors, or shards)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    p.add_argument(
        "--modes",
        type=_modes,
        default=("float32-highest",),
        metavar="LIST",
        help=f"comma-separated, of {', '.join(MODES)} (default float32-highest)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where both frameworks run (default cpu; auto: gpu, tpu or cpu, the first present)",
    )
    p.add_argument("--batch", type=_positive_int, default=4, help="sequences (default 4)")
    p.add_argument(
        "--seq-len", type=_positive_int, default=32, help="tokens per sequence (default 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="of the random inputs (default 0)")
    p.add_argument(
        "--pad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sequences of different lengths (default on)",
    )
    p.add_argument(
        "--transformers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="for a Hugging Face folder, also compare against transformers (default on)",
    )
    return p


def _modes(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in MODES]
    if bad or not values:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a comma-separated list of {', '.join(MODES)}"
        )
    return values


def parse_args(argv: Sequence[str] | None = None, prog: str = "twin-encoder check"):
    return build_parser(prog).parse_args(argv)


def _check_path(path: Path) -> str | None:
    """Why ``path`` cannot be checked, before anything heavy is imported; None when it can."""
    if not path.exists():
        return f"{path} does not exist; expected a checkpoint file or a Hugging Face folder"
    has = {
        name for name in ("config.json", "model.safetensors.index.json") if (path / name).is_file()
    }
    if path.is_dir() and not has:
        return (
            f"{path} is a folder without config.json or model.safetensors.index.json; expected "
            "a Hugging Face model folder or a sharded checkpoint"
        )
    return None


def main(argv: Sequence[str] | None = None, *, prog: str = "twin-encoder check") -> int:
    """``twin-encoder check PATH [--json OUT]``: print the table; exit 0, 1 or 2 (see above)."""
    from shared.atomic import OutputPathError, check_output_path, write_atomic

    args = parse_args(argv, prog)
    problem = _check_path(args.path)
    if problem:
        return fail(problem)
    if args.json is not None:
        try:
            check_output_path(args.json)
        except OutputPathError as e:
            return fail(str(e))
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return fail(str(e))
    try:
        report = check(
            args.path,
            modes=args.modes,
            device=device,
            batch=args.batch,
            seq_len=args.seq_len,
            pad=args.pad,
            seed=args.seed,
            with_transformers=args.transformers,
        )
    except (ValueError, OSError) as e:  # a file or folder we cannot read: say why
        return fail(f"{args.path}: {e}" if str(args.path) not in str(e) else str(e))
    print(report.format())
    if args.json is not None:
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.json}")
    return 0 if report.within_tolerance else OUT_OF_TOLERANCE
