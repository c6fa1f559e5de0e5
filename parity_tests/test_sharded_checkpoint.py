"""Sharded checkpoints: written by every process, loaded on any mesh or one device, in either
framework; Hugging Face's sharded folders in and out; a writer killed mid-write.

Two launches: a child pytest with 4 JAX host devices (parity_tests/sharded_ckpt_jax_cases.py)
and 4 gloo ranks of PyTorch (parity_tests/sharded_ckpt_workers.py), which load the JAX save
onto their mesh, write their own, and then die in a second write.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import jax_impl
import jax_impl.checkpoint
import torch_impl
import torch_impl.checkpoint
from parity_tests import sharded_ckpt_workers as W
from parity_tests.helpers import random_weights, run_jax_cases, tiny_config
from shared import hf, sharded
from shared.layouts import CheckpointError
from shared.tolerances import assert_close, tolerance
from torch_impl import parallel

ROOT = Path(__file__).resolve().parent.parent
F32 = tolerance("float32")


def _want(key: str) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in random_weights(W.CFG, seed=W.SEEDS[key]).items()}


def _assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name


# ---------------------------------------------------------------------------------------------
# The two launches


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """JAX on 4 host devices in a child pytest: its (data=2, model=2) save lands in out/jax."""
    folder = tmp_path_factory.mktemp("sharded")
    rc, log = run_jax_cases(
        "sharded_ckpt_jax_cases.py", env={"TWIN_SHARDED_OUT": str(folder)}, timeout=300
    )
    folder.joinpath("log.txt").write_text(log)
    folder.joinpath("rc").write_text(str(rc))
    return folder


@pytest.fixture(scope="module")
def ranks(out) -> Path:
    """4 gloo ranks, (data=2, model=2): load out/jax, save out/torch, then die in a resave."""
    if out.joinpath("rc").read_text() != "0":
        pytest.fail("the JAX child failed:\n" + out.joinpath("log.txt").read_text()[-4000:])
    with pytest.raises(RuntimeError, match=r"^rank \d failed") as failed:
        parallel.launch(W.run_ranks, 4, str(out), str(out / "jax"), timeout_s=240)
    out.joinpath("launch-error.txt").write_text(str(failed.value))
    return out


def test_jax_saves_on_data2_model2_and_loads_on_model4_seq2_and_one_device(out):
    log = out.joinpath("log.txt").read_text()
    assert out.joinpath("rc").read_text() == "0", log[-6000:]
    assert "6 passed" in log and "failed" not in log and "skipped" not in log, log[-3000:]


def test_jax_sharded_save_loads_in_torch_on_one_device_bit_exactly(out):
    model = torch_impl.checkpoint.load_sharded(out / "jax")
    _assert_equal(torch_impl.export_weights(model), _want("jax"))


def test_jax_sharded_save_loads_onto_a_torch_mesh_with_fsdp_bit_exactly(ranks):
    back = dict(np.load(ranks / "from-jax-weights.npz"))
    assert tuple(back.pop("q_local")) == (8, 8)  # each rank read a quarter of q
    _assert_equal(back, _want("jax"))
    single = torch_impl.from_weights(random_weights(W.CFG, seed=W.SEEDS["jax"]), W.CFG)
    with torch.no_grad():
        want = single(*W.inputs()).numpy()
    parts = [np.load(ranks / f"from-jax-{r}.npz") for r in range(4)]
    # each rank read one (8, 8) block of q, the four blocks distinct: only its own slice
    blocks = [tuple(map(tuple, p["q_reads"][0].tolist())) for p in parts]
    assert all(len(p["q_reads"]) == 1 for p in parts)
    assert sorted(blocks) == [((a, a + 8), (b, b + 8)) for a in (0, 8) for b in (0, 8)]
    rows = {int(p["data_rank"]): p["h"] for p in parts}
    assert_close(np.concatenate([rows[0], rows[1]]), want, F32, "forward on the loaded mesh")


def test_torch_ranks_write_their_own_files_and_jax_loads_them_bit_exactly(ranks):
    folder = ranks / "torch"
    index = json.loads((folder / sharded.INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    # data ranks hold replicas: only the two "model" ranks of data rank 0 write
    assert files == [sharded.file_name(1, k, 2) for k in (1, 2)]
    assert "layers.0.attention.q.weight[0:16,8:16]" in index["weight_map"]
    assert "embeddings.token.weight" in index["weight_map"]  # replicated: written whole, once
    model = jax_impl.checkpoint.load_sharded(folder)
    _assert_equal(jax_impl.export_weights(model), _want("torch"))


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(ranks, tmp_path):
    """Rank 1 wrote half its file of generation 2 and died: the index is still generation
    1's, every file it names is there, and it loads bit for bit; the next save cleans up."""
    assert re.match(r"rank \d failed", ranks.joinpath("launch-error.txt").read_text())
    folder = shutil.copytree(ranks / "torch", tmp_path / "ckpt")
    names = sorted(p.name for p in folder.iterdir())
    leftovers = [n for n in names if n.startswith(".model-g00002-00002-of-00002")]
    assert len(leftovers) == 1, names  # rank 1's half-written temporary file
    index = json.loads((folder / sharded.INDEX).read_text())
    assert index["metadata"]["generation"] == 1
    assert all((folder / f).is_file() for f in index["weight_map"].values())
    _assert_equal(
        torch_impl.export_weights(torch_impl.checkpoint.load_sharded(folder)), _want("torch")
    )
    (folder / ".model.safetensors.index.json.0badc0de.tmp").write_text("{")  # a dead commit's
    after = torch_impl.from_weights(random_weights(W.CFG, seed=W.SEEDS["after"]), W.CFG)
    torch_impl.checkpoint.save_sharded(after, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        sharded.file_name(2, 1, 1),
        sharded.INDEX,
    ]
    _assert_equal(jax_impl.export_weights(jax_impl.checkpoint.load_sharded(folder)), _want("after"))


# ---------------------------------------------------------------------------------------------
# The neutral core


def test_slices_must_tile_each_tensor_exactly():
    shapes = {"embeddings.token.weight": (4, 2)}
    held = [
        [("embeddings.token.weight", ((0, 2), (0, 2)))],
        [
            ("embeddings.token.weight", ((0, 2), (0, 2))),
            ("embeddings.token.weight", ((2, 4), (0, 2))),
        ],
    ]
    assert sharded.assign(held, shapes) == [
        [("embeddings.token.weight", ((0, 2), (0, 2)))],  # the lowest holder writes
        [("embeddings.token.weight", ((2, 4), (0, 2)))],
    ]
    with pytest.raises(
        CheckpointError,
        match=r"'embeddings.token.weight' \(4, 2\): its shards "
        r"leave a gap",
    ):
        sharded.assign([[("embeddings.token.weight", ((0, 2), (0, 2)))]], shapes)
    with pytest.raises(CheckpointError, match="overlap"):
        sharded.assign(
            [
                [
                    ("embeddings.token.weight", ((0, 3), (0, 2))),
                    ("embeddings.token.weight", ((2, 4), (0, 2))),
                ]
            ],
            shapes,
        )


def test_a_slice_across_stored_shards_is_assembled_from_their_overlaps(tmp_path):
    """Stored as 2 x 2 blocks, read as a slice straddling all four (a coarser mesh)."""
    cfg = tiny_config(n_layers=1)
    weights = _cast(random_weights(cfg, seed=5))
    shapes = {n: w.shape for n, w in weights.items()}
    pieces = []
    for name, w in weights.items():
        if w.ndim == 2:
            r, c = w.shape[0] // 2, w.shape[1] // 2
            blocks = [((a, a + r), (b, b + c)) for a in (0, r) for b in (0, c)]
        else:
            blocks = [sharded.full(w.shape)]
        pieces += [(name, s, w[tuple(slice(*x) for x in s)]) for s in blocks]
    files = {sharded.write_file(tmp_path, 1, 1, 1, pieces, shapes): [p[:2] for p in pieces]}
    sharded.commit(tmp_path, 1, cfg, files)
    index = sharded.read_index(tmp_path)
    q = weights["layers.0.attention.q.weight"]
    got = sharded.read_slice(index, "layers.0.attention.q.weight", ((3, 13), (5, 11)))
    assert np.array_equal(got, q[3:13, 5:11])
    loaded, cfg2 = sharded.load_weights(tmp_path)
    assert cfg2 == cfg
    _assert_equal(loaded, weights)


def _cast(weights):
    return {k: v.astype(np.float32) for k, v in weights.items()}


def test_an_index_naming_a_missing_file_is_a_named_error(tmp_path):
    model = torch_impl.from_weights(random_weights(W.CFG, seed=1), W.CFG)
    torch_impl.checkpoint.save_sharded(model, tmp_path)
    (tmp_path / sharded.file_name(1, 1, 1)).unlink()
    with pytest.raises(
        CheckpointError,
        match=r"names 1 file\(s\) that are not in .*"
        r"\['model-g00001-00001-of-00001\.safetensors'\]",
    ):
        jax_impl.checkpoint.load_sharded(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expected .*model\.safetensors\.index\.json"):
        torch_impl.checkpoint.load_sharded(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Hugging Face sharded folders

BERT = tiny_config(positional="learned", type_vocab_size=2, embed_norm=True, n_layers=1)


def test_hf_sharded_folder_loads_in_automodel_and_reads_back_bit_for_bit(tmp_path):
    import transformers

    weights = _cast(random_weights(BERT, seed=7))
    hf.save(weights, BERT, tmp_path, max_shard_size="3KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(w.nbytes for w in weights.values())
    model, info = transformers.AutoModel.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["unexpected_keys"] and info["missing_keys"] == {
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    ids, mask = W.inputs()
    with torch.no_grad():
        got = model.eval()(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)
        ).last_hidden_state.numpy()
        want = torch_impl.from_weights(weights, BERT)(ids, mask).numpy()
    assert_close(got, want, F32, "AutoModel on the sharded folder")
    back, cfg = hf.load(tmp_path)
    assert cfg == BERT
    _assert_equal(back, weights)
    hf.save(weights, BERT, tmp_path)  # one file again: the shards and index go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_a_sharded_checkpoint_converts_to_a_sharded_hf_folder_bit_for_bit(tmp_path):
    weights = _cast(random_weights(BERT, seed=8))
    model = torch_impl.from_weights(weights, BERT)
    torch_impl.checkpoint.save_sharded(model, tmp_path / "ckpt")
    sharded.to_hf(tmp_path / "ckpt", tmp_path / "hf", max_shard_size="3KB")
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) >= 3
    back, cfg = hf.load(tmp_path / "hf")
    assert cfg == BERT
    _assert_equal(back, weights)


def test_hf_index_naming_a_missing_file_or_tensor_is_a_named_error(tmp_path):
    weights = _cast(random_weights(BERT, seed=7))
    hf.save(weights, BERT, tmp_path, max_shard_size=3000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    files = sorted(set(index["weight_map"].values()))
    index["weight_map"]["embeddings.word_embeddings.weight"] = "model-00009-of-00009.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        ValueError,
        match=r"names 1 file\(s\) that are not in .*"
        r"\['model-00009-of-00009\.safetensors'\]",
    ):
        hf.load(tmp_path)
    wrong = files[-1]  # the word embeddings are in the first
    index["weight_map"]["embeddings.word_embeddings.weight"] = wrong
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=rf"'embeddings.word_embeddings.weight' is not in {re.escape(wrong)}"
    ):
        hf.load(tmp_path)
    with pytest.raises(ValueError, match=r"max_shard_size must be .* got '3 parsecs'"):
        hf.save(weights, BERT, tmp_path, max_shard_size="3 parsecs")


def test_one_format_never_writes_over_the_other_and_a_truncated_shard_names_its_file(tmp_path):
    """The two layouts share the index's file name: a save into a folder holding the other
    refuses (the model there would lose its index); a truncated shard is named."""
    weights = _cast(random_weights(BERT, seed=9))
    model = torch_impl.from_weights(weights, BERT)
    hf.save(weights, BERT, tmp_path / "hf", max_shard_size="3KB")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    with pytest.raises(CheckpointError, match=r"holds a Hugging Face model folder .* another"):
        torch_impl.checkpoint.save_sharded(model, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before
    torch_impl.checkpoint.save_sharded(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"holds a sharded checkpoint of this project"):
        hf.save(weights, BERT, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"out is the checkpoint's own folder"):
        sharded.to_hf(tmp_path / "ckpt", tmp_path / "ckpt")
    _assert_equal(sharded.load_weights(tmp_path / "ckpt")[0], weights)  # untouched
    shard = tmp_path / "ckpt" / sharded.file_name(1, 1, 1)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(shard))} is not a readable"):
        jax_impl.checkpoint.load_sharded(tmp_path / "ckpt")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_mesh_that_is_not_a_mesh_is_a_named_error(framework, tmp_path):
    """``mesh="data=2"`` (the command lines' spelling) is refused before anything is read."""
    module = torch_impl.checkpoint if framework == "torch" else jax_impl.checkpoint
    kind = "DeviceMesh" if framework == "torch" else "Mesh"
    with pytest.raises(ValueError, match=rf"mesh must be a {kind} .* got str 'data=2'"):
        module.load_sharded(tmp_path, mesh="data=2")
