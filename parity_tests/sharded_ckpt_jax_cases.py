"""JAX on 4 host devices: sharded saves and loads, run by test_sharded_checkpoint.py in a child.

JAX fixes its device count when it starts, so these cases run in their own pytest process
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the file name keeps the main
session from collecting them). The (data=2, model=2) save lands in ``$TWIN_SHARDED_OUT/jax``
for the PyTorch side to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import jax_impl
from jax_impl import checkpoint, parallel
from parity_tests.helpers import random_weights
from parity_tests.sharded_ckpt_workers import CFG, SEEDS
from shared import sharded

OUT = Path(os.environ.get("TWIN_SHARDED_OUT", "/nonexistent"))


def setup_module() -> None:
    assert jax.device_count() == 4, "run through test_sharded_checkpoint.py (4 host devices)"


@pytest.fixture(scope="module")
def saved() -> Path:
    """The (data=2, model=2) FSDP model, saved sharded."""
    weights = random_weights(CFG, seed=SEEDS["jax"])
    mesh = parallel.make_mesh(data=2, model=2)
    model = parallel.parallelize(jax_impl.from_weights(weights, CFG), mesh, fsdp=True)
    checkpoint.save_sharded(model, OUT / "jax")
    return OUT / "jax"


def _want() -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in random_weights(CFG, seed=SEEDS["jax"]).items()}


def test_save_stores_each_slice_once_in_its_own_entry(saved):
    index = json.loads((saved / sharded.INDEX).read_text())
    shards = index["metadata"]["shards"]
    assert set(index["weight_map"]) == set(shards)
    q = sorted(e for e in shards if e.startswith("layers.0.attention.q.weight"))
    # (embed, heads) on ("data", "model"): 2 x 2 blocks of the (16, 16) weight
    assert q == [
        "layers.0.attention.q.weight[0:8,0:8]",
        "layers.0.attention.q.weight[0:8,8:16]",
        "layers.0.attention.q.weight[8:16,0:8]",
        "layers.0.attention.q.weight[8:16,8:16]",
    ]
    # the q bias (heads,) on ("model", "data"): 4 pieces, "model" major
    bias = [s["slices"] for e, s in shards.items() if e.startswith("layers.0.attention.q.bias")]
    assert sorted(bias) == [[[0, 4]], [[4, 8]], [[8, 12]], [[12, 16]]]
    assert "layers.0.norm1.weight[0:8]" in shards  # FSDP splits the norms by "data"
    assert index["metadata"]["generation"] == 1


@pytest.mark.parametrize(
    ("mesh_shape", "fsdp"),
    [
        ({"model": 4}, False),
        ({"seq": 2}, False),
        ({"data": 2, "model": 2}, False),
        ({"data": 4}, True),
        (None, False),
    ],
    ids=str,
)
def test_load_on_any_mesh_is_bit_exact_and_placed_by_the_plan(saved, mesh_shape, fsdp, monkeypatch):
    mesh = None if mesh_shape is None else parallel.make_mesh(**mesh_shape)
    reads = []
    read_slice = sharded.read_slice

    def record(index, tensor, slices, files=None):
        reads.append((tensor, slices))
        return read_slice(index, tensor, slices, files)

    monkeypatch.setattr(sharded, "read_slice", record)
    loaded = checkpoint.load_sharded(saved, mesh, fsdp=fsdp)
    q_reads = sorted(s for t, s in reads if t == "layers.0.attention.q.weight")
    got = jax_impl.export_weights(loaded)
    want = _want()
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    if mesh is None:
        return
    # the same placement as parallelize gives the same weights on that mesh
    reference = jax_impl.from_weights(random_weights(CFG), CFG)
    parallel.parallelize(reference, mesh, fsdp=fsdp)
    ours = {n: p.get_value() for n, p, _ in jax_impl.parameter_table(loaded)}
    for name, param, _ in jax_impl.parameter_table(reference):
        value = param.get_value()
        assert ours[name].sharding.is_equivalent_to(value.sharding, value.ndim), name
    q = ours["layers.0.attention.q.weight"]
    if mesh_shape == {"model": 4}:  # each device read its own four columns of q, once
        assert q.sharding.spec == PartitionSpec(None, "model")
        assert q_reads == [((0, 16), (c, c + 4)) for c in (0, 4, 8, 12)]
    if mesh_shape == {"seq": 2}:  # parameters whole along "seq": replicas read once
        assert len(q.sharding.device_set) == 2
        assert all(s.data.shape == (16, 16) for s in q.addressable_shards)
        assert q_reads == [((0, 16), (0, 16))]
    if mesh_shape == {"data": 2, "model": 2}:  # no fsdp: the two column halves
        assert q_reads == [((0, 16), (0, 8)), ((0, 16), (8, 16))]
    if mesh_shape == {"data": 4}:  # fsdp on 4: row quarters, across the saved 8-row blocks
        assert q.sharding.spec == PartitionSpec("data", "model")  # "model" of size 1
        assert q_reads == [((r, r + 4), (0, 16)) for r in (0, 4, 8, 12)]
