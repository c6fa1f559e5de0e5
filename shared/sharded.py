"""Sharded checkpoints: every process writes its own slices; any mesh, or one device, reads them.

NumPy and safetensors only; ``torch_impl/checkpoint.py`` and ``jax_impl/checkpoint.py`` are
the thin adapters (which slices a process holds, and where to put the slices it reads).

**Layout.** A folder in the Hugging Face sharded safetensors layout::

    model.safetensors.index.json                 {"metadata": {...}, "weight_map": {...}}
    model-g00002-00001-of-00003.safetensors      generation 2, file 1 of 3
    model-g00002-00002-of-00003.safetensors
    ...

A *shard* is a rectangular slice of one format-v1 tensor (``shared/tensors.py`` names them),
stored in the format's (in, out) layout as its own safetensors entry: the tensor's name when
the slice is the whole tensor, else the name followed by the slice, e.g.
``layers.0.attention.q.weight[0:16,8:16]``. Hugging Face's index maps each entry to ONE
file, so a tensor split across processes cannot be one entry written by several of them;
storing each distinct slice under its own name keeps the index exactly Hugging Face's shape
(``weight_map``: entry -> file) with nothing gathered to one host. Replicas of a slice are
written once, by the lowest process that holds it. The index's ``metadata`` holds
``total_size`` (bytes, as Hugging Face writes it), ``format`` and ``config`` (as a format
file's metadata, ``shared/weights.py``), ``generation``, and ``shards``: for each entry,
its tensor, the tensor's shape and the slice (``[[start, stop], ...]`` per axis). These
folders are this project's checkpoints (format-v1 names); ``shared.hf.save(...,
max_shard_size=...)`` writes the sharded folders that ``transformers`` loads.

**Atomic commit.** Each process writes its one file through ``shared.atomic`` (temporary
name, then rename) under a name carrying the new generation, so the files the current
index points at are never touched. After a barrier, process 0 checks that every file is
there and readable, writes the index (atomically: the folder holds the complete new index
or the previous one), then removes the files of older generations and the leftovers of
interrupted writes. A write that dies half way leaves the previous index and its files.

**Reading.** A process reads only the slices its placement needs:
``safe_open(file).get_slice(entry)[a:b, c:d]`` reads those bytes of the file and no others
(safetensors seeks to each row of the slice). A wanted slice that spans several stored
shards (a load onto a coarser mesh) is assembled from each one's overlap, so any mesh reads
any other mesh's checkpoint: resharding on load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared import weights as v1
from shared.atomic import check_output_folder, write_atomic
from shared.config import EncoderConfig
from shared.layouts import CheckpointError

__all__ = [
    "INDEX",
    "Files",
    "Index",
    "Shard",
    "Slices",
    "assign",
    "commit",
    "entry_name",
    "file_name",
    "full",
    "is_sharded",
    "load_weights",
    "next_generation",
    "read_index",
    "read_slice",
    "to_hf",
    "write_file",
]

INDEX = "model.safetensors.index.json"
_FILE = re.compile(r"model-g(\d{5,})-(\d{5,})-of-(\d{5,})\.safetensors")
# temporary files of shared.atomic left by a process killed while writing
_LEFTOVER = re.compile(
    r"\.(model-g\d{5,}-\d{5,}-of-\d{5,}\.safetensors|model\.safetensors\.index\.json)"
    r"\.[0-9a-f]+\.tmp"
)

Slices = tuple[tuple[int, int], ...]  # (start, stop) per axis
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors' dtype names, bytes


@dataclasses.dataclass(frozen=True)
class Shard:
    """One stored slice: the entry that holds it, its tensor, the tensor's shape, the slice."""

    entry: str
    tensor: str
    shape: tuple[int, ...]
    slices: Slices


@dataclasses.dataclass(frozen=True)
class Index:
    """A read ``model.safetensors.index.json``: config, generation, and where each shard is."""

    folder: Path
    config: EncoderConfig
    generation: int
    shards: dict[str, list[tuple[Shard, str]]]  # tensor -> [(shard, file name)]


def full(shape: Sequence[int]) -> Slices:
    """The slice that is the whole of a tensor of ``shape``."""
    return tuple((0, int(n)) for n in shape)


def entry_name(tensor: str, shape: Sequence[int], slices: Slices) -> str:
    """The safetensors entry of a shard: ``tensor`` if whole, else ``tensor[a:b,c:d]``."""
    if tuple(slices) == full(shape):
        return tensor
    return f"{tensor}[{','.join(f'{a}:{b}' for a, b in slices)}]"


def file_name(generation: int, k: int, n: int) -> str:
    """File ``k`` of ``n`` (from 1) of a generation: ``model-g00002-00001-of-00003.safetensors``."""
    return f"model-g{generation:05d}-{k:05d}-of-{n:05d}.safetensors"


def next_generation(folder: str | os.PathLike) -> int:
    """1 + the generation of the folder's current index (1 if it has none).

    Raises CheckpointError when ``folder`` holds a Hugging Face model (a ``config.json``, or
    an index without this project's metadata): a save there would replace its index and
    orphan its files.
    """
    folder = Path(folder)
    path = folder / INDEX
    if (folder / "config.json").is_file() or (path.is_file() and not is_sharded(folder)):
        raise CheckpointError(
            f"{folder} holds a Hugging Face model folder (config.json or its own {INDEX}); "
            "a sharded checkpoint would replace its index: save into another folder"
        )
    if not path.is_file():
        return 1
    return _read_json(path)["metadata"].get("generation", 0) + 1


def is_sharded(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` has this project's sharded index (its metadata lists ``shards``)."""
    path = Path(folder) / INDEX
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text()).get("metadata")
    except (json.JSONDecodeError, AttributeError):
        return False
    return isinstance(meta, dict) and "shards" in meta


def assign(
    held: Sequence[Sequence[tuple[str, Slices]]], shapes: dict[str, tuple[int, ...]]
) -> list[list[tuple[str, Slices]]]:
    """Which process writes which slice: each distinct slice once, by the lowest process
    holding it. ``held[p]`` lists ``(tensor, slice)`` that process ``p`` holds; returns the
    same per process, only what it writes.

    Raises CheckpointError when the distinct slices of a tensor do not tile it exactly (a
    gap or an overlap), naming the tensor.
    """
    owner: dict[tuple[str, Slices], int] = {}
    for p, pieces in enumerate(held):
        for tensor, slices in pieces:
            owner.setdefault((tensor, tuple(map(tuple, slices))), p)
    writes: list[list[tuple[str, Slices]]] = [[] for _ in held]
    for (tensor, slices), p in owner.items():
        writes[p].append((tensor, slices))
    for tensor, shape in shapes.items():
        _check_tiling(tensor, shape, [s for t, s in owner if t == tensor])
    return writes


def _check_tiling(tensor: str, shape: tuple[int, ...], parts: list[Slices]) -> None:
    """The slices cover every element of ``tensor`` exactly once: each lies inside the
    shape, no two overlap, and their sizes add up to the tensor's."""
    for slices in parts:
        if len(slices) != len(shape) or any(
            not 0 <= a < b <= n for (a, b), n in zip(slices, shape, strict=True)
        ):
            raise CheckpointError(f"tensor {tensor!r}: slice {slices} is outside its shape {shape}")
    for i, first in enumerate(parts):
        for second in parts[i + 1 :]:
            if all(max(a, c) < min(b, d) for (a, b), (c, d) in zip(first, second, strict=True)):
                raise CheckpointError(
                    f"tensor {tensor!r} {shape}: its shards {first} and {second} overlap"
                )
    if sum(math.prod(b - a for a, b in s) for s in parts) != math.prod(shape):
        raise CheckpointError(
            f"tensor {tensor!r} {shape}: its shards leave a gap; expected them to tile it "
            f"exactly, got {sorted(parts)}"
        )


def write_file(
    folder: str | os.PathLike,
    generation: int,
    k: int,
    n: int,
    pieces: Sequence[tuple[str, Slices, np.ndarray]],
    shapes: dict[str, tuple[int, ...]],
) -> str:
    """Write one process's file (``k`` of ``n``) of ``pieces`` ``(tensor, slice, array)``,
    atomically; returns its name. The arrays are in format-v1 layout, shaped as their slices."""
    folder = check_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for tensor, slices, array in pieces:
        want = tuple(b - a for a, b in slices)
        if tuple(array.shape) != want:
            raise ValueError(
                f"tensor {tensor!r} slice {slices}: expected an array of shape {want}, "
                f"got {tuple(array.shape)}"
            )
        tensors[entry_name(tensor, shapes[tensor], slices)] = np.ascontiguousarray(array)
    name = file_name(generation, k, n)
    metadata = {"format": "pt", "generation": str(generation)}
    write_atomic(folder / name, lambda tmp: _write_tensors(tensors, tmp, metadata))
    return name


def _write_tensors(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str]) -> None:
    from safetensors import numpy as st_numpy

    st_numpy.save_file(tensors, path, metadata=metadata)


def commit(
    folder: str | os.PathLike,
    generation: int,
    cfg: EncoderConfig,
    files: dict[str, Sequence[tuple[str, Slices]]],
) -> Path:
    """Process 0, after every process has written its file: check the files, write the
    index atomically, then remove older generations' files and interrupted writes.

    ``files`` maps each file name to the ``(tensor, slice)`` it holds. Raises
    CheckpointError (and writes no index) when a file is missing or lacks an entry.
    """
    from safetensors import safe_open

    folder = Path(folder)
    shapes = v1.expected_shapes(cfg)
    weight_map, shards, total = {}, {}, 0
    for name, pieces in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: a process did not write its shards")
        with safe_open(str(path), framework="numpy") as fh:
            stored = set(fh.keys())
            for tensor, slices in pieces:
                entry = entry_name(tensor, shapes[tensor], slices)
                if entry not in stored:
                    raise CheckpointError(f"{path} lacks the entry {entry!r}")
                weight_map[entry] = name
                shards[entry] = {
                    "tensor": tensor,
                    "shape": list(shapes[tensor]),
                    "slices": [list(s) for s in slices],
                }
                itemsize = _ITEMSIZE[fh.get_slice(entry).get_dtype()]
                total += itemsize * math.prod(b - a for a, b in slices)
    for tensor, shape in shapes.items():
        _check_tiling(
            tensor,
            shape,
            [tuple(map(tuple, s["slices"])) for s in shards.values() if s["tensor"] == tensor],
        )
    fmt = v1.format_of(cfg)
    index = {
        "metadata": {
            "total_size": total,
            "format": fmt,
            "config": v1._config_json(cfg, fmt),
            "generation": generation,
            "shards": shards,
        },
        "weight_map": weight_map,
    }
    text = json.dumps(index, indent=2) + "\n"
    write_atomic(folder / INDEX, lambda tmp: Path(tmp).write_text(text))
    for path in folder.iterdir():
        if (_FILE.fullmatch(path.name) and path.name not in files) or _LEFTOVER.fullmatch(
            path.name
        ):
            path.unlink(missing_ok=True)
    return folder / INDEX


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metadata"), dict):
        raise CheckpointError(f"{path}: expected a JSON object with 'metadata' and 'weight_map'")
    return raw


def read_index(folder: str | os.PathLike) -> Index:
    """Read and check a sharded checkpoint's index.

    Raises FileNotFoundError when ``folder`` has no index; CheckpointError when the index
    names a file that is not there, its metadata is not this project's, or its shards do
    not tile every tensor of the config exactly.
    """
    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no sharded checkpoint at {folder}: expected {path}")
    raw = _read_json(path)
    meta, weight_map = raw["metadata"], raw.get("weight_map", {})
    if meta.get("format") not in v1.FORMATS or "shards" not in meta:
        raise CheckpointError(
            f"{path}: metadata 'format' is {meta.get('format')!r}, expected one of "
            f"{v1.FORMATS} with 'shards' (a Hugging Face folder is read by shared.hf.load)"
        )
    try:
        cfg = EncoderConfig.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata 'config' is invalid: {e}") from None
    missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
    if missing:
        raise CheckpointError(
            f"{path} names {len(missing)} file(s) that are not in {folder}: {missing}"
        )
    shapes = v1.expected_shapes(cfg)
    shards: dict[str, list[tuple[Shard, str]]] = {t: [] for t in shapes}
    for entry, info in meta["shards"].items():
        tensor = info["tensor"]
        if tensor not in shapes or tuple(info["shape"]) != shapes[tensor]:
            raise CheckpointError(
                f"{path}: shard {entry!r} of tensor {tensor!r} {tuple(info['shape'])}; "
                f"expected a tensor of the config, {shapes.get(tensor, 'not in format v1')}"
            )
        if entry not in weight_map:
            raise CheckpointError(f"{path}: shard {entry!r} has no file in 'weight_map'")
        slices = tuple(tuple(s) for s in info["slices"])
        shards[tensor].append((Shard(entry, tensor, shapes[tensor], slices), weight_map[entry]))
    for tensor, shape in shapes.items():
        _check_tiling(tensor, shape, [s.slices for s, _ in shards[tensor]])
    return Index(folder, cfg, int(meta.get("generation", 0)), shards)


class Files:
    """Open safetensors files of one folder, each opened once."""

    def __init__(self, folder: Path):
        self.folder, self.open = folder, {}

    def get(self, name: str):
        from safetensors import safe_open

        if name not in self.open:
            path = self.folder / name
            try:
                self.open[name] = safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors' SafetensorError, or an OSError
                raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
        return self.open[name]


def read_slice(index: Index, tensor: str, slices: Slices, files: Files | None = None) -> np.ndarray:
    """The slice ``slices`` of ``tensor`` (format-v1 layout), read from the shards that
    overlap it: of each, only the overlap's bytes (``get_slice(entry)[a:b, ...]``).
    bfloat16 and float16 are widened exactly to float32."""
    files = files or Files(index.folder)
    out = None
    for shard, name in index.shards[tensor]:
        overlap = tuple(
            (max(a, c), min(b, d)) for (a, b), (c, d) in zip(slices, shard.slices, strict=True)
        )
        if any(a >= b for a, b in overlap):
            continue
        within = tuple(
            slice(a - c, b - c) for (a, b), (c, _) in zip(overlap, shard.slices, strict=True)
        )
        part = v1.as_numpy_float(files.get(name).get_slice(shard.entry)[within])
        if out is None:
            out = np.empty(tuple(b - a for a, b in slices), part.dtype)
        out[tuple(slice(a - c, b - c) for (a, b), (c, _) in zip(overlap, slices, strict=True))] = (
            part
        )
    if out is None:  # an empty slice
        out = np.empty(tuple(b - a for a, b in slices), np.float32)
    return out


def load_weights(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], EncoderConfig]:
    """Every tensor whole, for one device: ``(format-v1 weights, config)``."""
    index = read_index(folder)
    files = Files(index.folder)
    shapes = v1.expected_shapes(index.config)
    weights = {t: read_slice(index, t, full(shape), files) for t, shape in shapes.items()}
    v1.validate(weights, index.config)
    return weights, index.config


def to_hf(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    model_type: str | None = None,
) -> Path:
    """Convert a sharded checkpoint to a Hugging Face folder that ``transformers.AutoModel``
    loads, in Hugging Face's own sharded layout (whole tensors, at most ``max_shard_size``
    per file): ``shared.hf.save`` of the whole weights. Reads every tensor on this host.

    Raises what :func:`load_weights` and ``shared.hf.save`` raise (a family that cannot
    express the config is a ValueError naming the field).
    """
    from shared import hf

    if Path(out).resolve() == Path(folder).resolve():
        raise ValueError(
            f"out is the checkpoint's own folder {folder}: a Hugging Face folder there would "
            "replace the checkpoint's index; pass another folder"
        )
    weights, cfg = load_weights(folder)
    return hf.save(weights, cfg, out, model_type=model_type, max_shard_size=max_shard_size)
