"""Reading and writing Hugging Face model folders: ``config.json`` and ``model.safetensors``.

NumPy and safetensors only, and never pickle: ``pytorch_model.bin`` is refused, because
unpickling a stranger's file can run their code. Half-precision tensors (float16, bfloat16)
are widened to float32, which is exact; bfloat16 is read through ``ml_dtypes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import check_output_folder, write_atomic

__all__ = ["open_safetensors", "read_config_json", "read_tensor", "weights_file", "write_folder"]

_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; expected a Hugging Face model folder")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def weights_file(folder: Path) -> Path:
    """``folder/model.safetensors``, or a ValueError saying what is there instead."""
    path = folder / "model.safetensors"
    if path.is_file():
        return path
    if (folder / "model.safetensors.index.json").is_file():
        raise ValueError(
            f"{folder} holds a sharded checkpoint (model.safetensors.index.json); expected a "
            "single model.safetensors"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        raise ValueError(
            f"{folder} has no model.safetensors, only {pickles}: pickle-based weights are "
            "never loaded (unpickling can run arbitrary code). Convert them to safetensors "
            "in an environment you trust, e.g. model.save_pretrained(folder) with transformers"
        )
    raise ValueError(f"{folder} has no model.safetensors")


def open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def read_tensor(fh: Any, name: str, path: Path) -> np.ndarray:
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


def write_folder(folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (metadata format "pt", which
    transformers requires), each atomically (``shared.atomic``), with the permissions the
    umask gives. ``folder`` and its missing parents are created; ``OutputPathError`` when
    it, or a parent, is a file."""
    from safetensors import numpy as st_numpy

    folder = check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    text = json.dumps(config, indent=2) + "\n"
    write_atomic(
        folder / "model.safetensors",
        lambda tmp: st_numpy.save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    write_atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(text))
