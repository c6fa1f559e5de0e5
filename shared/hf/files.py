"""Reading and writing Hugging Face model folders: ``config.json`` and ``model.safetensors``,
or the sharded layout ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
(its ``weight_map`` names the file of each tensor; every tensor is whole in one file).

NumPy and safetensors only, and never pickle: ``pytorch_model.bin`` is refused, because
unpickling a stranger's file can run their code. Half-precision tensors (float16, bfloat16)
are widened to float32, which is exact; bfloat16 is read through ``ml_dtypes``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import check_output_folder, write_atomic

__all__ = [
    "INDEX",
    "open_safetensors",
    "parse_size",
    "read_config_json",
    "read_tensor",
    "weights_file",
    "write_folder",
]

_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names
INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


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
    """``folder/model.safetensors``, else ``folder/model.safetensors.index.json`` (a sharded
    checkpoint), or a ValueError saying what is there instead."""
    path = folder / "model.safetensors"
    if path.is_file():
        return path
    if (folder / INDEX).is_file():
        return folder / INDEX
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        raise ValueError(
            f"{folder} has no model.safetensors, only {pickles}: pickle-based weights are "
            "never loaded (unpickling can run arbitrary code). Convert them to safetensors "
            "in an environment you trust, e.g. model.save_pretrained(folder) with transformers"
        )
    raise ValueError(f"{folder} has no model.safetensors")


def open_safetensors(path: Path) -> Any:
    """A safetensors file opened for reading (``keys``, ``get_slice``, ``get_tensor``), or,
    for ``model.safetensors.index.json``, the files its ``weight_map`` names, read as one.
    ValueError for an unreadable file, or an index naming a file or tensor that is absent."""
    from safetensors import safe_open

    if path.name == INDEX:
        return _Sharded(path)
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


class _Sharded:
    """The files of a sharded checkpoint, read through its index as one file."""

    def __init__(self, path: Path):
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) for f in weight_map.values()
        ):
            raise ValueError(
                f"{path}: a sharded checkpoint's index must be a JSON object with a "
                "'weight_map' of tensor names to file names"
            )
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path.parent / f).is_file()]
        if missing:
            raise ValueError(
                f"{path} names {len(missing)} file(s) that are not in {path.parent}: {missing}"
            )
        self.path, self.weight_map = path, weight_map
        self.files = {f: open_safetensors(path.parent / f) for f in files}
        for name, f in weight_map.items():
            if name not in self.files[f].keys():
                raise ValueError(f"{path}: tensor {name!r} is not in {f}, where it points")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def get_slice(self, name: str):
        return self.files[self.weight_map[name]].get_slice(name)

    def get_tensor(self, name: str) -> np.ndarray:
        return self.files[self.weight_map[name]].get_tensor(name)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"200KB"``, ``"5GB"`` (powers of 10) or
    ``"2GiB"`` (powers of 2), as ``transformers``' ``max_shard_size``. ValueError otherwise."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", size) if isinstance(size, str) else None
    if match and match[2].upper() in _UNITS and int(match[1]) > 0:
        return int(match[1]) * _UNITS[match[2].upper()]
    raise ValueError(
        f"max_shard_size must be a positive number of bytes or a size such as '5GB' or "
        f"'200MiB', got {size!r}"
    )


def _shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    """Tensors in order, in files of at most ``max_bytes`` each (a larger tensor alone)."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards


def write_folder(
    folder: Path,
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    *,
    max_shard_size: int | str | None = None,
) -> None:
    """Write ``config.json`` and ``model.safetensors`` (metadata format "pt", which
    transformers requires), each atomically (``shared.atomic``), with the permissions the
    umask gives. ``folder`` and its missing parents are created; ``OutputPathError`` when
    it, or a parent, is a file.

    With ``max_shard_size`` (bytes, or ``"5GB"``: :func:`parse_size`), the sharded layout
    instead: ``model-0000k-of-0000n.safetensors``, whole tensors in order, at most that many
    bytes each (a larger tensor alone), then ``model.safetensors.index.json``
    (``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``), written last.
    Files of the other layout, and shard files the new index does not name, are removed
    after it is written.
    """
    from safetensors import numpy as st_numpy

    max_bytes = None if max_shard_size is None else parse_size(max_shard_size)
    folder = check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    text = json.dumps(config, indent=2) + "\n"
    written = set()
    if max_bytes is None:
        write_atomic(
            folder / "model.safetensors",
            lambda tmp: st_numpy.save_file(tensors, tmp, metadata={"format": "pt"}),
        )
        written.add("model.safetensors")
    else:
        shards = _shards(tensors, max_bytes)
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            write_atomic(
                folder / name,
                lambda tmp, shard=shard: st_numpy.save_file(shard, tmp, metadata={"format": "pt"}),
            )
            weight_map.update(dict.fromkeys(shard, name))
            written.add(name)
        total = sum(a.nbytes for a in tensors.values())
        index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        write_atomic(folder / INDEX, lambda tmp: Path(tmp).write_text(index + "\n"))
        written.add(INDEX)
    write_atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(text))
    for path in folder.iterdir():
        stale = path.name in ("model.safetensors", INDEX) or _SHARD.fullmatch(path.name)
        if stale and path.name not in written:
            path.unlink()
