"""Checkpoint format v1 (and 2): one framework-neutral ``{name: array}`` map in a safetensors file.

Layout (``D`` = d_model, ``F`` = d_ff, ``V`` = vocab_size)::

    embeddings.token.weight           (V, D)
    embeddings.position.weight        (max_len, D)          only if positional == "learned"
    embeddings.token_type.weight      (type_vocab_size, D)  only if type_vocab_size > 0
    embeddings.norm.weight|bias       (D,)                  only if embed_norm
    layers.{i}.attention.{q,k,v,out}.weight (D, D), .bias (D,)
    layers.{i}.norm1.weight|bias      (D,)   the norm around attention
    layers.{i}.ffn.in.weight (D, F), .bias (F,);  layers.{i}.ffn.out.weight (F, D), .bias (D,)
    layers.{i}.norm2.weight|bias      (D,)   the norm around the feed-forward block
    final_norm.weight|bias            (D,)                  only if final_norm

Format 2 ("twin-encoder/2") adds EncoderConfig fields (:data:`FORMAT_2_FIELDS`) and one
tensor; a file is written as format 1 whenever its config uses none of them, and both load:

    embeddings.project.weight (E, D), .bias (D,)            only if embed_dim (E) > 0;
                                                            then the tables and
                                                            embeddings.norm are E wide
    embeddings.patch.weight (C, P, P, D), .bias (D,)        only if image_size > 0 (ViT),
    embeddings.class_token  (1, D)                          instead of embeddings.token

Linear weights are stored **(in, out)**, so that ``y = x @ W + b`` as in the paper; PyTorch's
``nn.Linear`` keeps (out, in) and transposes on the way in and out. Head ``h`` of q, k and v
is columns ``h*hd:(h+1)*hd``, and rows ``h*hd:(h+1)*hd`` of ``out.weight``.

The file's metadata is ``{"format": "twin-encoder/1", "config": <EncoderConfig JSON>}``.
Loading is strict and never unpickles anything; saving is atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from shared.config import EncoderConfig
from shared.layouts import CheckpointError, check_names

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_2",
    "CheckpointError",
    "as_numpy_float",
    "expected_shapes",
    "format_of",
    "load_file",
    "save_file",
    "validate",
]

FORMAT = "twin-encoder/1"
FORMAT_2 = "twin-encoder/2"  # format 1 plus the EncoderConfig fields below
FORMATS = (FORMAT, FORMAT_2)
# EncoderConfig fields that format 1 does not know, with the value that means "not used".
FORMAT_2_FIELDS = {
    "causal": False,
    "position_pad_id": None,
    "embed_dim": 0,
    "image_size": 0,
    "patch_size": 16,
    "num_channels": 3,
}

Weights = dict[str, np.ndarray]


def expected_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of format v1 for ``cfg``, with its shape, in a fixed order."""
    d, f, e = cfg.d_model, cfg.d_ff, cfg.embed_width
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.image_size:
        p = cfg.patch_size
        shapes["embeddings.patch.weight"] = (cfg.num_channels, p, p, e)
        shapes["embeddings.patch.bias"] = (e,)
        shapes["embeddings.class_token"] = (1, e)
    else:
        shapes["embeddings.token.weight"] = (cfg.vocab_size, e)
    if cfg.positional == "learned":
        shapes["embeddings.position.weight"] = (cfg.max_len, e)
    if cfg.type_vocab_size > 0:
        shapes["embeddings.token_type.weight"] = (cfg.type_vocab_size, e)
    if cfg.embed_norm:
        shapes |= _norm("embeddings.norm", e)
    if cfg.embed_dim:
        shapes |= _linear("embeddings.project", e, d)
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        for name in ("q", "k", "v", "out"):
            shapes |= _linear(f"{p}.attention.{name}", d, d)
        shapes |= _norm(f"{p}.norm1", d)
        shapes |= _linear(f"{p}.ffn.in", d, f)
        shapes |= _linear(f"{p}.ffn.out", f, d)
        shapes |= _norm(f"{p}.norm2", d)
    if cfg.final_norm:
        shapes |= _norm("final_norm", d)
    return shapes


def _linear(prefix: str, d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (d_in, d_out), f"{prefix}.bias": (d_out,)}


def _norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def format_of(cfg: EncoderConfig) -> str:
    """The oldest format that can hold ``cfg``: format 1 unless a format-2 field is used."""
    config = cfg.to_dict()
    used = any(config[name] != unused for name, unused in FORMAT_2_FIELDS.items())
    return FORMAT_2 if used else FORMAT


def _config_json(cfg: EncoderConfig, fmt: str) -> str:
    """The config as JSON; format 1 files leave out the format-2 fields (older readers
    reject fields they do not know)."""
    config = cfg.to_dict()
    if fmt == FORMAT:
        config = {k: v for k, v in config.items() if k not in FORMAT_2_FIELDS}
    return json.dumps(config, sort_keys=True)


def validate(weights: Weights, cfg: EncoderConfig) -> None:
    """Raise :class:`CheckpointError` unless ``weights`` is exactly format v1 for ``cfg``."""
    expected = expected_shapes(cfg)
    check_names(
        expected,
        weights,
        detail=lambda name: f" (expected shape {expected[name]})",
        unexpected_detail=lambda name: (
            f" (shape {tuple(np.shape(weights[name]))}) not in format v1 for this config"
        ),
    )
    for name, shape in expected.items():
        array = weights[name]
        found = tuple(np.shape(array))
        if found != shape:
            raise CheckpointError(f"tensor {name!r}: expected shape {shape}, found {found}")
        dtype = np.asarray(array).dtype
        if not (np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"):
            raise CheckpointError(f"tensor {name!r}: expected a float dtype, found {dtype}")


def as_numpy_float(array) -> np.ndarray:
    """``array`` as a NumPy float array, bfloat16 (``ml_dtypes``) widened exactly to float32,
    since frameworks cannot take NumPy bfloat16 directly."""
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array


def save_file(path: str | os.PathLike, weights: Weights, cfg: EncoderConfig) -> None:
    """Write ``weights`` and ``cfg`` to ``path`` atomically: a crash leaves no partial file."""
    from safetensors.numpy import save_file as _save

    validate(weights, cfg)
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory; expected a file path, e.g. {path / 'model.safetensors'}"
        )
    tensors = {k: np.ascontiguousarray(weights[k]) for k in expected_shapes(cfg)}
    fmt = format_of(cfg)
    metadata = {"format": fmt, "config": _config_json(cfg, fmt)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        _save(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_file(path: str | os.PathLike) -> tuple[Weights, EncoderConfig]:
    """Read a format-v1 checkpoint: ``(weights, config)``. Strict; never unpickles."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            weights = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated, corrupt or another "
            f"format; pickle-based .bin/.pt files are never loaded): {e}"
        ) from None
    fmt = metadata.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(
            f"{path}: metadata 'format' is {fmt!r}, expected {FORMAT!r} or {FORMAT_2!r}"
        )
    if "config" not in metadata:
        raise CheckpointError(f"{path}: metadata has no 'config'")
    try:
        cfg = EncoderConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata 'config' is invalid: {e}") from None
    if fmt == FORMAT and format_of(cfg) != FORMAT:
        raise CheckpointError(
            f"{path}: metadata 'format' is {FORMAT!r}, but its config uses format-2 fields "
            f"({', '.join(FORMAT_2_FIELDS)}); expected {FORMAT_2!r}"
        )
    try:
        validate(weights, cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: tensors disagree with the metadata config: {e}") from None
    return weights, cfg
