"""Checkpoint format v1: round trips, cross-framework loading, metadata, strict loading, atomic save.

The format is framework-neutral (docs/design.md, "The checkpoint format"): a safetensors file with a
flat ``{name: array}`` map, linear weights stored (in, out), and the metadata
``{"format": "twin-encoder/1", "config": <EncoderConfig JSON>}``. Bad files are written here
with ``safetensors.numpy`` directly, not with our writer, so that the loader is tested against
files it did not make.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors import safe_open

import jax_impl
import torch_impl
from parity_tests.helpers import (
    build_pair,
    jax_dtype_scope,
    make_inputs,
    random_weights,
    run_jax,
    run_torch,
    tiny_config,
    to_numpy,
)
from shared import EncoderConfig
from shared import weights as v1
from shared.frameworks import IMPLS
from shared.tolerances import assert_close, tolerance

# Every optional tensor present (learned positions, token types, embedding norm, final norm);
# d_ff != d_model, so a transposed (in, out) matrix has the wrong shape and cannot slip through.
FULL = EncoderConfig(
    vocab_size=40,
    d_model=16,
    n_heads=2,
    d_ff=24,
    n_layers=2,
    max_len=12,
    dropout=0.0,
    activation="gelu",
    norm_first=True,
    positional="learned",
    type_vocab_size=2,
    embed_norm=True,
    final_norm=True,
)
# No optional tensor: sinusoidal positions (not stored), post-norm.
PLAIN = tiny_config(vocab_size=40, n_heads=2, d_ff=24, max_len=12)
CONFIGS = [pytest.param(FULL, id="full"), pytest.param(PLAIN, id="plain")]

FRAMEWORKS = ("torch", "jax")


def _other(framework: str) -> str:
    return "jax" if framework == "torch" else "torch"


def _run(framework: str, model, ids, mask=None, types=None, **kwargs):
    run = run_torch if framework == "torch" else run_jax
    out = run(model, ids, mask, types, **kwargs)
    if isinstance(out, tuple):
        return tuple(_numpy_tree(o) for o in out)
    return to_numpy(out)


def _numpy_tree(x):
    return [to_numpy(a) for a in x] if isinstance(x, list) else to_numpy(x)


def _write(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> None:
    """Write a safetensors file without going through our own writer."""
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def _read(path) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Tensors and metadata of a safetensors file, read with safetensors, not our loader."""
    with safe_open(str(path), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def _metadata(cfg: EncoderConfig) -> dict[str, str]:
    return {"format": "twin-encoder/1", "config": json.dumps(dataclasses.asdict(cfg))}


def _v1_names(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """The table of docs/design.md, "The checkpoint format", written out by hand for FULL/PLAIN."""
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    names = {"embeddings.token.weight": (v, d)}
    if cfg.positional == "learned":
        names["embeddings.position.weight"] = (cfg.max_len, d)
    if cfg.type_vocab_size:
        names["embeddings.token_type.weight"] = (cfg.type_vocab_size, d)
    if cfg.embed_norm:
        names["embeddings.norm.weight"] = names["embeddings.norm.bias"] = (d,)
    for i in range(cfg.n_layers):
        for m in ("q", "k", "v", "out"):
            names[f"layers.{i}.attention.{m}.weight"] = (d, d)
            names[f"layers.{i}.attention.{m}.bias"] = (d,)
        names[f"layers.{i}.norm1.weight"] = names[f"layers.{i}.norm1.bias"] = (d,)
        names[f"layers.{i}.ffn.in.weight"] = (d, f)
        names[f"layers.{i}.ffn.in.bias"] = (f,)
        names[f"layers.{i}.ffn.out.weight"] = (f, d)
        names[f"layers.{i}.ffn.out.bias"] = (d,)
        names[f"layers.{i}.norm2.weight"] = names[f"layers.{i}.norm2.bias"] = (d,)
    if cfg.final_norm:
        names["final_norm.weight"] = names["final_norm.bias"] = (d,)
    return names


def _assert_bit_identical(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what):
    assert sorted(actual) == sorted(expected), what
    for name in expected:
        assert actual[name].dtype == np.float32, f"{what}: {name} is {actual[name].dtype}"
        assert np.array_equal(actual[name], expected[name]), f"{what}: {name} changed"


# ---------------------------------------------------------------------------------------------
# Round trips and cross-framework loading


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("start", FRAMEWORKS)
def test_round_trip_through_both_frameworks_and_two_files_is_bit_exact(tmp_path, cfg, start):
    """start -> file -> other -> file -> start: every tensor, both files and the outputs agree bit
    for bit (float32 all the way: nothing is rounded, only copied and transposed)."""
    other = _other(start)
    weights = random_weights(cfg, seed=1)
    first = IMPLS[start].from_weights(weights, cfg)
    IMPLS[start].save(first, tmp_path / "a.safetensors")
    middle = IMPLS[other].load(tmp_path / "a.safetensors")
    IMPLS[other].save(middle, tmp_path / "b.safetensors")
    last = IMPLS[start].load(tmp_path / "b.safetensors")

    _assert_bit_identical(IMPLS[start].export_weights(first), weights, f"{start} model")
    _assert_bit_identical(
        IMPLS[other].export_weights(middle), weights, f"{other} model loaded from {start}"
    )
    _assert_bit_identical(
        IMPLS[start].export_weights(last), weights, f"{start} model after the round trip"
    )
    # Both files hold the same tensors and metadata. (Not the same bytes: safetensors writes
    # the metadata map in hash order, which varies from call to call.)
    tensors_a, metadata_a = _read(tmp_path / "a.safetensors")
    tensors_b, metadata_b = _read(tmp_path / "b.safetensors")
    _assert_bit_identical(tensors_b, tensors_a, "second file")
    assert metadata_b == metadata_a

    ids, mask, types = make_inputs(cfg, 2, 7, seed=2, pad="some")
    assert np.array_equal(_run(start, last, ids, mask, types), _run(start, first, ids, mask, types))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("saver", FRAMEWORKS)
def test_checkpoint_saved_by_one_framework_loads_in_the_other(tmp_path, cfg, saver, device):
    loader = _other(saver)
    model = IMPLS[saver].from_weights(random_weights(cfg, seed=3), cfg)
    IMPLS[saver].save(model, tmp_path / "model.safetensors")
    loaded = IMPLS[loader].load(tmp_path / "model.safetensors")
    assert loaded.config == cfg

    ids, mask, types = make_inputs(cfg, 3, 9, seed=4, pad="some")
    h_s, attn_s = _run(saver, model, ids, mask, types, return_attention=True)
    h_l, attn_l = _run(loader, loaded, ids, mask, types, return_attention=True)
    tol = tolerance("float32", device)
    assert_close(h_l, h_s, tol, f"hidden states, saved by {saver}, loaded by {loader}")
    for i, (a_l, a_s) in enumerate(zip(attn_l, attn_s, strict=True)):
        assert_close(a_l, a_s, tol, f"attention of layer {i}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_loaded_model_is_in_eval_mode(tmp_path, framework):
    """``load`` returns a model ready for inference (documented): dropout off."""
    cfg = PLAIN.replace(dropout=0.5)
    IMPLS[framework].save(
        IMPLS[framework].from_weights(random_weights(cfg, 5), cfg), tmp_path / "m.safetensors"
    )
    loaded = IMPLS[framework].load(tmp_path / "m.safetensors")
    ids, _, _ = make_inputs(cfg, 2, 6, seed=6)
    assert np.array_equal(_run(framework, loaded, ids), _run(framework, loaded, ids))


# ---------------------------------------------------------------------------------------------
# What the file holds, read with safetensors itself


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("saver", FRAMEWORKS)
def test_file_holds_format_and_config_metadata_and_the_v1_tensor_table(tmp_path, cfg, saver):
    path = tmp_path / "model.safetensors"
    IMPLS[saver].save(IMPLS[saver].from_weights(random_weights(cfg, 7), cfg), path)
    tensors, metadata = _read(path)
    assert set(metadata) == {"format", "config"}
    assert metadata["format"] == "twin-encoder/1"
    # format 1 holds the format-1 fields only: older readers reject fields they do not know
    newer = {**v1.FORMAT_2_FIELDS, **v1.FORMAT_3_FIELDS}
    v1_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in newer}
    assert json.loads(metadata["config"]) == v1_fields
    assert {k: v.shape for k, v in tensors.items()} == _v1_names(cfg)
    assert {v.dtype for v in tensors.values()} == {np.dtype(np.float32)}


def test_linear_weights_are_stored_in_out_so_that_y_is_x_at_w_plus_b(tmp_path, device):
    """The torch model keeps (out, in); the file must hold (in, out): y = x @ W + b."""
    cfg = PLAIN
    tm = torch_impl.from_weights(random_weights(cfg, 8), cfg)
    torch_impl.save(tm, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as fh:
        w, b = fh.get_tensor("layers.0.ffn.in.weight"), fh.get_tensor("layers.0.ffn.in.bias")
    x = np.random.default_rng(9).standard_normal((5, cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        y_torch = tm.encoder.layers[0].ffn.in_proj(torch.from_numpy(x)).numpy()
    assert w.shape == (cfg.d_model, cfg.d_ff)
    assert_close(x @ w + b, y_torch, tolerance("float32", device), "x @ W + b vs nn.Linear")


# ---------------------------------------------------------------------------------------------
# Strict loading: one CheckpointError (a ValueError) naming the key and both shapes


def _drop(name):
    def mutate(t):
        del t[name]

    return mutate


def _set(name, value_fn):
    def mutate(t):
        t[name] = value_fn(t)

    return mutate


TENSOR_DEFECTS = [
    pytest.param(
        _drop("layers.1.norm2.bias"),
        "missing tensor 'layers.1.norm2.bias' (expected shape (16,))",
        id="missing_tensor",
    ),
    pytest.param(
        _set("layers.0.attention.rope.weight", lambda t: np.ones((4, 2), np.float32)),
        "unexpected tensor 'layers.0.attention.rope.weight' (shape (4, 2))",
        id="unexpected_tensor",
    ),
    pytest.param(
        _set(
            "layers.0.ffn.in.weight", lambda t: np.ascontiguousarray(t["layers.0.ffn.in.weight"].T)
        ),
        "tensor 'layers.0.ffn.in.weight': expected shape (16, 24), found (24, 16)",
        id="transposed_tensor",
    ),
    pytest.param(
        _set("embeddings.token.weight", lambda t: t["embeddings.token.weight"][:-1].copy()),
        "tensor 'embeddings.token.weight': expected shape (40, 16), found (39, 16)",
        id="too_few_rows",
    ),
    pytest.param(
        _set("layers.0.norm1.weight", lambda t: np.ones(16, np.int32)),
        "tensor 'layers.0.norm1.weight': expected a float dtype, found int32",
        id="integer_tensor",
    ),
    pytest.param(
        _set("final_norm.bias", lambda t: np.zeros(16, np.uint8)),
        "tensor 'final_norm.bias': expected a float dtype, found uint8",
        id="unsigned_tensor",
    ),
    pytest.param(
        _set("layers.1.attention.out.bias", lambda t: np.zeros(16, np.bool_)),
        "tensor 'layers.1.attention.out.bias': expected a float dtype, found bool",
        id="bool_tensor",
    ),
]


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize(("mutate", "message"), TENSOR_DEFECTS)
def test_loading_a_file_with_a_bad_tensor_names_the_key_and_shapes(
    tmp_path, loader, mutate, message
):
    tensors = random_weights(FULL, seed=10)
    mutate(tensors)
    _write(tmp_path / "bad.safetensors", tensors, _metadata(FULL))
    with pytest.raises(v1.CheckpointError, match=re.escape(message)):
        IMPLS[loader].load(tmp_path / "bad.safetensors")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(v1.CheckpointError, ValueError)


METADATA_DEFECTS = [
    pytest.param(
        {"n_layers": 3},
        "missing tensor 'layers.2.attention.q.weight' (expected shape (16, 16))",
        id="config_has_more_layers",
    ),
    pytest.param(
        {"n_layers": 1},
        "unexpected tensor 'layers.1.attention.k.bias'",
        id="config_has_fewer_layers",
    ),
    pytest.param(
        {"vocab_size": 41},
        "tensor 'embeddings.token.weight': expected shape (41, 16), found (40, 16)",
        id="config_vocab_size_differs",
    ),
    pytest.param(
        {"d_ff": 32},
        "tensor 'layers.0.ffn.in.weight': expected shape (16, 32), found (16, 24)",
        id="config_d_ff_differs",
    ),
    pytest.param(
        {"positional": "sinusoidal"},
        "unexpected tensor 'embeddings.position.weight' (shape (12, 16))",
        id="config_says_sinusoidal",
    ),
    pytest.param(
        {"final_norm": False}, "unexpected tensor 'final_norm.bias'", id="config_has_no_final_norm"
    ),
]


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize(("changes", "message"), METADATA_DEFECTS)
def test_metadata_config_that_disagrees_with_the_tensors_is_rejected(
    tmp_path, loader, changes, message
):
    _write(
        tmp_path / "bad.safetensors", random_weights(FULL, 11), _metadata(FULL.replace(**changes))
    )
    with pytest.raises(v1.CheckpointError, match="disagree") as info:
        IMPLS[loader].load(tmp_path / "bad.safetensors")
    assert message in str(info.value)


def _cfg_json(**changes) -> str:
    return json.dumps(dataclasses.asdict(FULL) | changes)


FORMAT_DEFECTS = [
    pytest.param(
        {"format": "twin-encoder/4", "config": _cfg_json()},
        "metadata 'format' is 'twin-encoder/4', expected 'twin-encoder/1', 'twin-encoder/2' "
        "or 'twin-encoder/3'",
        id="newer_format",
    ),
    pytest.param(
        {"format": "pt", "config": _cfg_json()},
        "metadata 'format' is 'pt', expected 'twin-encoder/1'",
        id="transformers_format",
    ),
    pytest.param(
        {"config": _cfg_json()},
        "metadata 'format' is None, expected 'twin-encoder/1'",
        id="no_format",
    ),
    pytest.param(None, "metadata 'format' is None, expected 'twin-encoder/1'", id="no_metadata"),
    pytest.param({"format": "twin-encoder/1"}, "metadata has no 'config'", id="no_config"),
    pytest.param(
        {"format": "twin-encoder/1", "config": "{n_layers: 2"},
        "metadata 'config' is invalid: config is not valid JSON",
        id="config_not_json",
    ),
    pytest.param(
        {"format": "twin-encoder/1", "config": _cfg_json(n_heads=3)},
        "metadata 'config' is invalid: d_model=16 is not divisible by n_heads=3",
        id="config_invalid_value",
    ),
    pytest.param(
        {"format": "twin-encoder/1", "config": _cfg_json(num_heads=2)},
        "metadata 'config' is invalid: unknown EncoderConfig field(s) ['num_heads']",
        id="config_unknown_field",
    ),
]


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize(("metadata", "message"), FORMAT_DEFECTS)
def test_wrong_or_missing_format_and_config_metadata_is_rejected(
    tmp_path, loader, metadata, message
):
    _write(tmp_path / "bad.safetensors", random_weights(FULL, 12), metadata)
    with pytest.raises(v1.CheckpointError, match=re.escape(message)):
        IMPLS[loader].load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(np.random.default_rng(13).bytes(4096), id="random_bytes"),
        pytest.param(b"", id="empty_file"),
        pytest.param(b'{"embeddings.token.weight": [[0.0]]}', id="json_text"),
        pytest.param(b"PK\x03\x04" + bytes(60), id="zip_header"),
    ],
)
def test_a_file_that_is_not_safetensors_is_rejected(tmp_path, loader, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(v1.CheckpointError, match="is not a readable safetensors file"):
        IMPLS[loader].load(tmp_path / "model.safetensors")


class _OpensMarkerWhenUnpickled:
    """Unpickling this calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize("writer", ["pickle.dumps", "torch.save"])
def test_a_pickle_is_never_unpickled(tmp_path, loader, writer):
    # Control: the payload is live. Unpickling it does create its marker.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_OpensMarkerWhenUnpickled(str(control)))).close()
    assert control.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "model.safetensors"
    if writer == "pickle.dumps":
        path.write_bytes(pickle.dumps(_OpensMarkerWhenUnpickled(str(marker))))
    else:  # a PyTorch .pt/.bin checkpoint: a zip archive holding a pickle
        torch.save({"model": _OpensMarkerWhenUnpickled(str(marker))}, path)
    with pytest.raises(v1.CheckpointError, match="is not a readable safetensors file"):
        IMPLS[loader].load(path)
    assert not marker.exists(), "the loader unpickled the file"


def _cut_point(data: bytes, where: str) -> int:
    header_len = struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header size, JSON, data
    return {
        "inside_header_size": 4,
        "inside_header": 8 + header_len // 2,
        "after_header": 8 + header_len,
        "half_of_the_data": 8 + header_len + (len(data) - 8 - header_len) // 2,
        "without_last_byte": len(data) - 1,
    }[where]


@pytest.mark.parametrize("loader", FRAMEWORKS)
@pytest.mark.parametrize(
    "where",
    [
        "inside_header_size",
        "inside_header",
        "after_header",
        "half_of_the_data",
        "without_last_byte",
    ],
)
def test_a_truncated_file_is_rejected(tmp_path, loader, where):
    good = tmp_path / "good.safetensors"
    IMPLS[loader].save(IMPLS[loader].from_weights(random_weights(FULL, 14), FULL), good)
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: _cut_point(data, where)])
    with pytest.raises(v1.CheckpointError, match="is not a readable safetensors file"):
        IMPLS[loader].load(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("loader", FRAMEWORKS)
def test_a_missing_file_raises_file_not_found_naming_the_path(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.safetensors"))):
        IMPLS[loader].load(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------------
# Saving is atomic: a failed save leaves no file and keeps the previous checkpoint


def _writer_that_fails(exc: BaseException):
    """Stands in for safetensors' writer: writes half the file, then fails."""

    def write(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)
        raise exc

    return write


def _rename_that_fails(src, dst):
    raise OSError(f"cannot rename {src} to {dst}")


FAILURES = [
    pytest.param("writer", OSError("No space left on device"), id="writer_raises_oserror"),
    pytest.param("writer", KeyboardInterrupt(), id="writer_interrupted"),
    pytest.param("rename", OSError("cannot rename"), id="rename_fails"),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("where", "exc"), FAILURES)
@pytest.mark.parametrize("existing", [True, False], ids=["over_a_good_checkpoint", "fresh_path"])
def test_a_failed_save_leaves_no_file_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch, framework, where, exc, existing
):
    path = tmp_path / "model.safetensors"
    if existing:
        IMPLS[framework].save(IMPLS[framework].from_weights(random_weights(PLAIN, 15), PLAIN), path)
        before = path.read_bytes()
    newer = IMPLS[framework].from_weights(random_weights(PLAIN, 16), PLAIN)
    if where == "writer":
        monkeypatch.setattr(safetensors.numpy, "save_file", _writer_that_fails(exc))
    else:
        monkeypatch.setattr(os, "replace", _rename_that_fails)
    with pytest.raises(type(exc)):
        IMPLS[framework].save(newer, path)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == (["model.safetensors"] if existing else [])
    if existing:
        assert path.read_bytes() == before
        _assert_bit_identical(
            IMPLS[framework].export_weights(IMPLS[framework].load(path)),
            random_weights(PLAIN, 15),
            "old",
        )


def test_saving_invalid_weights_fails_before_touching_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    v1.save_file(path, random_weights(PLAIN, 17), PLAIN)
    before = path.read_bytes()
    bad = random_weights(PLAIN, 18)
    bad["layers.0.ffn.out.weight"] = bad["layers.0.ffn.out.weight"][:, :-1]
    with pytest.raises(v1.CheckpointError, match=re.escape("'layers.0.ffn.out.weight'")):
        v1.save_file(path, bad, PLAIN)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# dtypes: export is float32; import casts to the model's dtype


def _bf16_rounded(a: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even, by ml_dtypes) and back to float32."""
    return a.astype(ml_dtypes.bfloat16).astype(np.float32)


def test_export_of_a_bfloat16_model_gives_float32_arrays_holding_the_bf16_values(tmp_path):
    weights = random_weights(FULL, 19)
    tm, jm = build_pair(FULL, weights, dtype="bfloat16")
    assert tm.encoder.layers[0].ffn.in_proj.weight.dtype == torch.bfloat16
    for framework, model in (("torch", tm), ("jax", jm)):
        exported = IMPLS[framework].export_weights(model)
        _assert_bit_identical(
            exported, {k: _bf16_rounded(v) for k, v in weights.items()}, f"{framework} bf16"
        )
        with jax_dtype_scope("bfloat16"):
            IMPLS[framework].save(model, tmp_path / f"{framework}.safetensors")
        tensors, _ = _read(tmp_path / f"{framework}.safetensors")
        assert {v.dtype for v in tensors.values()} == {np.dtype(np.float32)}


def test_import_casts_float32_weights_to_a_bfloat16_model():
    weights = random_weights(FULL, 20)
    tm, jm = build_pair(FULL, weights, dtype="bfloat16")  # from_weights imports float32 arrays
    for name, param, _ in torch_impl.parameter_table(tm):
        assert param.dtype == torch.bfloat16, name
    for name, param, _ in jax_impl.parameter_table(jm):
        assert param[...].dtype == ml_dtypes.bfloat16, name
    expected = {k: _bf16_rounded(v) for k, v in weights.items()}
    _assert_bit_identical(torch_impl.export_weights(tm), expected, "torch")
    _assert_bit_identical(jax_impl.export_weights(jm), expected, "jax")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("source", [np.float64, np.float16])
def test_import_casts_other_float_dtypes_to_a_float32_model(framework, source):
    # Divide by 3 so that float64 values are not already float32 values: the cast must round.
    weights = {
        k: (v.astype(np.float64) / 3).astype(source) for k, v in random_weights(FULL, 21).items()
    }
    model = IMPLS[framework].from_weights(weights, FULL)
    expected = {k: v.astype(np.float32) for k, v in weights.items()}
    _assert_bit_identical(
        IMPLS[framework].export_weights(model), expected, f"{framework} from {source.__name__}"
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_float64_checkpoint_loads_into_a_float64_model_without_rounding(tmp_path, framework):
    weights = {k: v.astype(np.float64) / 3 for k, v in random_weights(PLAIN, 22).items()}
    v1.save_file(tmp_path / "f64.safetensors", weights, PLAIN)
    with jax_dtype_scope("float64"):
        dtype = torch.float64 if framework == "torch" else np.float64
        model = IMPLS[framework].load(tmp_path / "f64.safetensors", dtype=dtype)
        exported = IMPLS[framework].export_weights(model)
    for name, value in weights.items():
        assert exported[name].dtype == np.float64, name
        assert np.array_equal(exported[name], value), name


# ---------------------------------------------------------------------------------------------
# In memory: import_weights is strict too, and all-or-nothing


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("model_changes", "message"),
    [
        pytest.param(
            {"n_layers": 3},
            "missing tensor 'layers.2.attention.q.weight' (expected shape (16, 16))",
            id="model_has_more_layers",
        ),
        pytest.param(
            {"n_layers": 1},
            "unexpected tensor 'layers.1.attention.k.bias' (shape (16,))",
            id="model_has_fewer_layers",
        ),
        pytest.param(
            {"d_ff": 32},
            "tensor 'layers.0.ffn.in.weight': expected shape (16, 32), found (16, 24)",
            id="model_has_wider_ffn",
        ),
        pytest.param(
            {"type_vocab_size": 3},
            "tensor 'embeddings.token_type.weight': expected shape (3, 16), found (2, 16)",
            id="model_has_more_token_types",
        ),
        pytest.param(
            {"embed_norm": False},
            "unexpected tensor 'embeddings.norm.bias' (shape (16,))",
            id="model_has_no_embedding_norm",
        ),
    ],
)
def test_import_into_a_model_of_another_config_names_the_key(framework, model_changes, message):
    weights = random_weights(FULL, 23)
    other_cfg = FULL.replace(**model_changes)
    model = IMPLS[framework].from_weights(random_weights(other_cfg, 24), other_cfg)
    before = IMPLS[framework].export_weights(model)
    with pytest.raises(v1.CheckpointError, match=re.escape(message)):
        IMPLS[framework].import_weights(model, weights)
    # Validation runs before any copy: the model keeps every one of its old weights.
    _assert_bit_identical(IMPLS[framework].export_weights(model), before, "after a failed import")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_import_of_an_integer_tensor_in_memory_is_rejected(framework):
    weights = random_weights(PLAIN, 25)
    weights["layers.1.ffn.in.bias"] = np.arange(PLAIN.d_ff)
    model = IMPLS[framework].from_weights(random_weights(PLAIN, 26), PLAIN)
    with pytest.raises(
        v1.CheckpointError, match=re.escape("tensor 'layers.1.ffn.in.bias': expected a float dtype")
    ):
        IMPLS[framework].import_weights(model, weights)


@pytest.mark.parametrize("loader", FRAMEWORKS)
def test_a_bfloat16_checkpoint_written_by_safetensors_torch_loads_cast_to_float32(tmp_path, loader):
    import safetensors.torch

    weights = random_weights(PLAIN, 27)
    safetensors.torch.save_file(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in weights.items()},
        str(tmp_path / "bf16.safetensors"),
        metadata=_metadata(PLAIN),
    )
    model = IMPLS[loader].load(tmp_path / "bf16.safetensors")
    _assert_bit_identical(
        IMPLS[loader].export_weights(model),
        {k: _bf16_rounded(v) for k, v in weights.items()},
        "bf16 file",
    )
