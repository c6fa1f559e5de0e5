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

The names, shapes and logical axes are the rows of ``shared/tensors.py``.

Format 2 ("twin-encoder/2") adds EncoderConfig fields (:data:`FORMAT_2_FIELDS`) and one
tensor; a file is written as format 1 whenever its config uses none of them, and both load:

    embeddings.project.weight (E, D), .bias (D,)            only if embed_dim (E) > 0;
                                                            then the tables and
                                                            embeddings.norm are E wide
    embeddings.patch.weight (C, P, P, D), .bias (D,)        only if image_size > 0 (ViT),
    embeddings.class_token  (1, D)                          instead of embeddings.token

Format 3 ("twin-encoder/3") adds the EncoderConfig fields of encoders from 2021 on
(:data:`FORMAT_3_FIELDS`: RoPE, grouped K/V heads, windows, GLU, RMSNorm, bias-free
linears, q/k norms) and their tensors; a file is written as format 3 only when its config
uses one of them, and all three load:

    layers.{i}.attention.{k,v}.weight (D, G hd)             G = n_kv_heads K/V heads
    layers.{i}.attention.{q,k,v,out}.bias                   only if attention_bias
    layers.{i}.attention.{q_norm,k_norm}.weight (hd,)       only if qk_norm (Qwen3)
    layers.{i}.ffn.gate.weight (D, F), .bias (F,)           only if gated_ffn: the GLU's
                                                            activated half
    layers.{i}.ffn.{gate,in}.bias, ffn.out.bias             only if mlp_bias, mlp_out_bias
    *.norm*.bias                                            only for a LayerNorm with bias
    layers.0.norm1.*                                        absent if not first_attn_norm
    embeddings.position.weight                              absent with positional="rope"

Linear weights are stored **(in, out)**, so that ``y = x @ W + b`` as in the paper; PyTorch's
``nn.Linear`` keeps (out, in) and transposes on the way in and out. Head ``h`` of q, k and v
is columns ``h*hd:(h+1)*hd``, and rows ``h*hd:(h+1)*hd`` of ``out.weight``.

The file's metadata is ``{"format": "twin-encoder/1", "config": <EncoderConfig JSON>}``.
Loading is strict and never unpickles anything; saving is atomic (temporary file + rename,
``shared.atomic``) and gives the file the permissions the umask gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from shared.atomic import check_output_path, write_atomic
from shared.config import EncoderConfig, format_of_field
from shared.layouts import CheckpointError, check_names
from shared.tensors import tensors

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_2",
    "FORMAT_3",
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
FORMAT_3 = "twin-encoder/3"  # format 2 plus the fields of encoders from 2021 on
FORMATS = (FORMAT, FORMAT_2, FORMAT_3)  # oldest first: FORMATS[n - 1] is format n
# EncoderConfig fields that format 1 does not know, with the value that means "not used"
# (the fields that shared/config.py marks as added with format 2), and those of format 3.
FORMAT_2_FIELDS = {
    field.name: field.default
    for field in dataclasses.fields(EncoderConfig)
    if format_of_field(field) == 2
}
FORMAT_3_FIELDS = {
    field.name: field.default
    for field in dataclasses.fields(EncoderConfig)
    if format_of_field(field) == 3
}
_NEW_FIELDS = {FORMAT_2: FORMAT_2_FIELDS, FORMAT_3: FORMAT_3_FIELDS}

Weights = dict[str, np.ndarray]


def expected_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of format v1 for ``cfg``, with its shape, in a fixed order
    (the rows of ``shared/tensors.py``)."""
    return {t.name: t.shape for t in tensors(cfg)}


def format_of(cfg: EncoderConfig) -> str:
    """The oldest format that can hold ``cfg``: format 1 unless a format-2 field is used,
    format 3 if a format-3 field is."""
    config = {k: getattr(cfg, k) for k in (*FORMAT_2_FIELDS, *FORMAT_3_FIELDS)}
    for fmt in (FORMAT_3, FORMAT_2):
        if any(config[name] != unused for name, unused in _NEW_FIELDS[fmt].items()):
            return fmt
    return FORMAT


def _config_json(cfg: EncoderConfig, fmt: str) -> str:
    """The config as JSON; a file leaves out the fields of formats newer than its own
    (older readers reject fields they do not know)."""
    config = cfg.to_dict()
    for newer in FORMATS[FORMATS.index(fmt) + 1 :]:
        config = {k: v for k, v in config.items() if k not in _NEW_FIELDS[newer]}
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
    """Write ``weights`` and ``cfg`` to ``path`` atomically: a crash leaves no partial file.

    The file gets the permissions the umask gives (0644 under umask 022). Raises
    ``CheckpointError`` for weights that do not match ``cfg`` and
    ``shared.atomic.OutputPathError`` when ``path`` is a folder or its folder does not
    exist, before anything is written.
    """
    from safetensors import numpy as st_numpy

    validate(weights, cfg)
    path = check_output_path(path)
    tensors = {k: np.ascontiguousarray(weights[k]) for k in expected_shapes(cfg)}
    fmt = format_of(cfg)
    metadata = {"format": fmt, "config": _config_json(cfg, fmt)}
    write_atomic(path, lambda tmp: st_numpy.save_file(tensors, tmp, metadata=metadata))


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
            f"{path}: metadata 'format' is {fmt!r}, expected {FORMAT!r}, {FORMAT_2!r} or "
            f"{FORMAT_3!r}"
        )
    if "config" not in metadata:
        raise CheckpointError(f"{path}: metadata has no 'config'")
    try:
        cfg = EncoderConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata 'config' is invalid: {e}") from None
    needed = format_of(cfg)
    if FORMATS.index(fmt) < FORMATS.index(needed):
        n = FORMATS.index(needed) + 1
        raise CheckpointError(
            f"{path}: metadata 'format' is {fmt!r}, but its config uses format-{n} fields "
            f"({', '.join(_NEW_FIELDS[needed])}); expected {needed!r}"
        )
    try:
        validate(weights, cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: tensors disagree with the metadata config: {e}") from None
    return weights, cfg
