"""Hugging Face BERT checkpoint folder -> checkpoint format v1 and an ``EncoderConfig``.

NumPy and safetensors only (never torch, never jax), and never pickle: a folder must hold
``config.json`` and ``model.safetensors``; ``pytorch_model.bin`` is refused, because
unpickling a stranger's file can run their code.

What a BERT is, in this project's terms (``config.json`` field -> ``EncoderConfig`` field):
learned positions (``max_position_embeddings`` -> ``max_len``), token types
(``type_vocab_size``), a LayerNorm after the embedding sum (``embed_norm``), post-norm
layers, ``layer_norm_eps`` from the config (1e-12 in BERT, not PyTorch's 1e-5),
``hidden_act`` "gelu" = exact erf ("gelu_new" and "gelu_pytorch_tanh" are the tanh
approximation), dropout ``hidden_dropout_prob``. BERT also drops attention weights
(``attention_probs_dropout_prob``); this project does not, which changes training only,
never inference.

Tensors: names may carry the ``bert.`` prefix (``BertForPreTraining``, ``BertForMaskedLM``
...) or none (``BertModel``, sentence-transformers). Linear weights are stored (out, in) by
PyTorch and transposed to format v1's (in, out). Half-precision tensors (float16, bfloat16)
are widened to float32, which is exact; bfloat16 is read through ``ml_dtypes`` (NumPy has no
bfloat16 of its own). Tensors that are not part of the encoder are skipped, and only these
(:data:`IGNORED`); any other unknown tensor is an error, so nothing is dropped silently.

Command line: ``python -m shared.hf FOLDER OUT.safetensors`` writes a format-v1 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shared import weights as v1
from shared.config import EncoderConfig

__all__ = ["ACTIVATIONS", "IGNORED", "PREFIX", "load_bert", "main", "name_table"]

Weights = dict[str, np.ndarray]

PREFIX = "bert."  # the BertModel inside BertFor* task models

# Tensors that are not the encoder, skipped by name (after the prefix is removed):
IGNORED = (
    "embeddings.position_ids",  # a buffer 0..max_len-1 that older transformers saved; no weight
    "pooler.",  # BertPooler, tanh(W h_[CLS] + b): a head on top of the encoder
    "cls.predictions.",  # the masked-language-model head (BertForPreTraining, BertForMaskedLM)
    "cls.seq_relationship.",  # the next-sentence-prediction head (BertForPreTraining)
)

# config.json "hidden_act" -> EncoderConfig.activation
ACTIVATIONS = {
    "gelu": "gelu",  # exact: x * Phi(x)
    "gelu_new": "gelu_tanh",  # the tanh approximation (GPT-2's)
    "gelu_pytorch_tanh": "gelu_tanh",  # the same, through F.gelu(approximate="tanh")
    "relu": "relu",
}

# Defaults of transformers' BertConfig, for fields older config.json files leave out.
_DEFAULTS = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
}

_SIZES = (  # config.json field -> EncoderConfig field; required
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
    ("max_position_embeddings", "max_len"),
)

# Hugging Face BERT name                      format v1 name                  transposed
_EMBEDDINGS = (
    ("embeddings.word_embeddings.weight", "embeddings.token.weight", False),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight", False),
    ("embeddings.token_type_embeddings.weight", "embeddings.token_type.weight", False),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight", False),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias", False),
)
# under "encoder.layer.{i}."                  under "layers.{i}."
_LAYER = (
    ("attention.self.query.weight", "attention.q.weight", True),
    ("attention.self.query.bias", "attention.q.bias", False),
    ("attention.self.key.weight", "attention.k.weight", True),
    ("attention.self.key.bias", "attention.k.bias", False),
    ("attention.self.value.weight", "attention.v.weight", True),
    ("attention.self.value.bias", "attention.v.bias", False),
    ("attention.output.dense.weight", "attention.out.weight", True),
    ("attention.output.dense.bias", "attention.out.bias", False),
    ("attention.output.LayerNorm.weight", "norm1.weight", False),
    ("attention.output.LayerNorm.bias", "norm1.bias", False),
    ("intermediate.dense.weight", "ffn.in.weight", True),
    ("intermediate.dense.bias", "ffn.in.bias", False),
    ("output.dense.weight", "ffn.out.weight", True),
    ("output.dense.bias", "ffn.out.bias", False),
    ("output.LayerNorm.weight", "norm2.weight", False),
    ("output.LayerNorm.bias", "norm2.bias", False),
)

_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names


def name_table(n_layers: int) -> list[tuple[str, str, bool]]:
    """``(Hugging Face name without prefix, format-v1 name, transposed)`` for every tensor."""
    table = list(_EMBEDDINGS)
    for i in range(n_layers):
        table += [(f"encoder.layer.{i}.{hf}", f"layers.{i}.{ours}", t) for hf, ours, t in _LAYER]
    return table


def load_bert(folder: str | os.PathLike) -> tuple[Weights, EncoderConfig]:
    """Read a Hugging Face BERT folder (``config.json`` + ``model.safetensors``).

    Returns:
        ``(weights, config)``: format-v1 arrays (float32, or float64 if stored so) and the
        matching :class:`EncoderConfig`, ready for ``torch_impl.from_weights`` or
        ``jax_impl.from_weights``.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: with the reason: no ``config.json``; no ``model.safetensors`` (only
            pickle-based weights, or a sharded checkpoint); not a BERT (``model_type``); a
            feature this encoder lacks (relative positions, a decoder, an activation); a
            missing, unexpected, mis-shaped or non-float tensor.
    """
    weights, cfg, _ = _read(Path(folder))
    return weights, cfg


def _read(folder: Path) -> tuple[Weights, EncoderConfig, list[str]]:
    """``load_bert``, plus the names of the tensors it skipped (:data:`IGNORED`)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    cfg = _config(folder)
    path = _weights_file(folder)
    with _open(path) as fh:
        names = list(fh.keys())
        prefix = PREFIX if any(n.startswith(PREFIX) for n in names) else ""
        table = name_table(cfg.n_layers)
        wanted = {prefix + hf for hf, _, _ in table}
        ignored = [n for n in names if n not in wanted and _ignored(n, prefix)]
        unknown = sorted(set(names) - wanted - set(ignored))
        if unknown:
            raise ValueError(
                f"{path}: tensor {unknown[0]!r} is not part of a BERT encoder with "
                f"num_hidden_layers={cfg.n_layers} nor a known head {IGNORED}"
                + (f"; and {len(unknown) - 1} more" if len(unknown) > 1 else "")
            )
        missing = [prefix + hf for hf, _, _ in table if prefix + hf not in names]
        if missing:
            raise ValueError(
                f"{path}: missing tensor {missing[0]!r}, which a BERT with "
                f"num_hidden_layers={cfg.n_layers} needs"
                + (f"; and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        weights = {}
        for hf, ours, transposed in table:
            a = _tensor(fh, prefix + hf, path)
            weights[ours] = np.ascontiguousarray(a.T if transposed else a)
    try:
        v1.validate(weights, cfg)
    except v1.CheckpointError as e:
        raise ValueError(f"{path}: the tensors disagree with config.json: {e}") from None
    return weights, cfg, ignored


def _open(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def _ignored(name: str, prefix: str) -> bool:
    """Whether ``name`` is one of the :data:`IGNORED` tensors (with or without the prefix)."""
    inner = name.removeprefix(prefix)
    return any(inner == pattern or inner.startswith(pattern) for pattern in IGNORED)


def _tensor(fh: Any, name: str, path: Path) -> np.ndarray:
    """One tensor as a NumPy float array; float16 and bfloat16 widened (exactly) to float32."""
    dtype = fh.get_slice(name).get_dtype()  # safetensors' name: "F32", "BF16", "I64", ...
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, expected a float dtype")
    if dtype == "BF16":
        try:
            import ml_dtypes  # noqa: F401  (teaches NumPy the name "bfloat16")
        except ImportError:
            raise ValueError(
                f"{path}: tensor {name!r} is bfloat16, which NumPy cannot hold without the "
                "ml_dtypes package: pip install ml_dtypes"
            ) from None
    a = fh.get_tensor(name)
    return a.astype(np.float32) if dtype in ("F16", "BF16") else a


def _weights_file(folder: Path) -> Path:
    path = folder / "model.safetensors"
    if path.is_file():
        return path
    if (folder / "model.safetensors.index.json").is_file():
        raise ValueError(
            f"{folder} holds a sharded checkpoint (model.safetensors.index.json); only a "
            "single model.safetensors is read"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        raise ValueError(
            f"{folder} has no model.safetensors, only {pickles}: pickle-based weights are "
            "never loaded (unpickling can run arbitrary code). Convert them to safetensors "
            "in an environment you trust, e.g. model.save_pretrained(folder) with transformers"
        )
    raise ValueError(f"{folder} has no model.safetensors")


def _config(folder: Path) -> EncoderConfig:
    """config.json -> EncoderConfig, refusing what this encoder cannot compute."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; expected a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    data = _DEFAULTS | raw

    model_type = data.get("model_type")
    if model_type != "bert":
        raise ValueError(f"{path}: model_type is {model_type!r}; only 'bert' is read")
    position = data["position_embedding_type"]
    if position != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type is {position!r}; only 'absolute' (learned "
            "positions added to the embeddings) is supported, not relative position scores"
        )
    act = data["hidden_act"]
    if act not in ACTIVATIONS:
        raise ValueError(
            f"{path}: hidden_act is {act!r}; supported: {sorted(ACTIVATIONS)} "
            "(exact GELU, its tanh approximation, ReLU)"
        )
    if data.get("is_decoder") or data.get("add_cross_attention"):
        raise ValueError(
            f"{path}: a BERT decoder (is_decoder / add_cross_attention) is not an encoder"
        )
    missing = [key for key, _ in _SIZES if key not in data]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")

    try:
        return EncoderConfig(
            **{ours: data[hf] for hf, ours in _SIZES},
            dropout=float(data["hidden_dropout_prob"]),
            activation=ACTIVATIONS[act],
            norm_first=False,  # BERT is post-norm
            layer_norm_eps=float(data["layer_norm_eps"]),
            positional="learned",
            type_vocab_size=data["type_vocab_size"],
            embed_norm=True,
            final_norm=False,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.hf FOLDER OUT.safetensors``: convert, and print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.hf",
        description="Convert a Hugging Face BERT folder (config.json + model.safetensors) "
        "to a format-v1 checkpoint that torch_impl.load and jax_impl.load read.",
    )
    parser.add_argument("folder", type=Path, help="the Hugging Face model folder")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        weights, cfg, ignored = _read(args.folder)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    v1.save_file(args.out, weights, cfg)
    n_params = sum(a.size for a in weights.values())
    print(
        f"wrote {args.out}: BERT, {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
        f"{n_params / 1e6:.1f}M parameters in {len(weights)} tensors; "
        f"skipped {len(ignored)}: {', '.join(ignored) if ignored else 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
