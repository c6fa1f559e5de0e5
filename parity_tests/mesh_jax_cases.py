"""JAX on 4 host devices against one device: run by test_parallel.py in a child process.

JAX fixes its device count when it starts, so these cases run in their own pytest process
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the file name keeps the main
session from collecting them). Every comparison uses the float32 row of shared/tolerances.py.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl
import jax_impl.encoder
import jax_impl.train as jt
from jax_impl import parallel
from parity_tests.helpers import make_inputs, random_weights, tiny_config
from shared import EncoderConfig
from shared.data import Dataset, TaskConfig
from shared.inputs import Spec
from shared.tolerances import assert_close, tolerance
from shared.training import TrainConfig

CFG = tiny_config()
MESHES = [
    pytest.param(4, 1, False, id="data4"),
    pytest.param(1, 4, False, id="model4"),
    pytest.param(2, 2, False, id="data2xmodel2"),
    pytest.param(2, 2, True, id="data2xmodel2-fsdp"),
    pytest.param(4, 1, True, id="data4-fsdp"),
]
# the forward also on the meshes of the PyTorch cases (2 processes), to compare the two
FORWARD_MESHES = [
    *MESHES,
    pytest.param(2, 1, False, id="data2"),
    pytest.param(1, 2, False, id="model2"),
]
F32 = tolerance("float32")


def setup_module() -> None:
    assert jax.device_count() == 4, "run through test_parallel.py (it sets 4 host devices)"


def _pair(cfg: EncoderConfig, data: int, model: int, fsdp: bool):
    weights = random_weights(cfg, seed=1)
    single = jax_impl.from_weights(weights, cfg)
    mesh = parallel.make_mesh(data=data, model=model)
    sharded = parallel.parallelize(jax_impl.from_weights(weights, cfg), mesh, fsdp=fsdp)
    return single, sharded, mesh


@pytest.mark.parametrize(("data", "model", "fsdp"), FORWARD_MESHES)
def test_sharded_outputs_and_attention_weights_equal_one_device(data, model, fsdp):
    single, sharded, mesh = _pair(CFG, data, model, fsdp)
    ids, mask, _ = make_inputs(CFG, 4, 8, seed=2, pad="some")
    ids, mask = ids.astype(np.int32), mask.astype(np.int32)
    want_h, want_attn = single(ids, mask, return_attention=True)
    placed = parallel.place_batch({"ids": ids, "mask": mask}, mesh)
    got_h, got_attn = sharded(placed["ids"], placed["mask"], return_attention=True)
    assert data == 1 or got_h.sharding.spec[0] == "data"  # outputs stay split by batch
    assert_close(np.asarray(got_h), np.asarray(want_h), F32, "hidden states")
    for i, (got, want) in enumerate(zip(got_attn, want_attn, strict=True)):
        assert_close(np.asarray(got), np.asarray(want), F32, f"attention weights, layer {i}")
    _save_for_torch(f"forward-{data}x{model}{'-fsdp' if fsdp else ''}", np.asarray(got_h))


# one encoder of the 2021-on parts: GQA, RoPE, a sliding window, q/k norm, SwiGLU, RMSNorm
MODERN = tiny_config(
    n_heads=4, n_kv_heads=2, positional="rope", qk_norm=True, sliding_window=2,
    layer_types=("full_attention", "sliding_attention"), gated_ffn=True, activation="silu",
    norm="rms_norm", norm_bias=False, attention_bias=False, mlp_bias=False,
    mlp_out_bias=False, norm_first=True, final_norm=True,
)  # fmt: skip


@pytest.mark.parametrize(("data", "model", "fsdp"), [(2, 2, False), (1, 2, True)])
def test_a_modern_encoder_sharded_equals_one_device(data, model, fsdp):
    single, sharded, mesh = _pair(MODERN, data, model, fsdp)
    ids, mask, _ = make_inputs(MODERN, 4, 8, seed=2, pad="some")
    ids, mask = ids.astype(np.int32), mask.astype(np.int32)
    want_h, want_attn = single(ids, mask, return_attention=True)
    placed = parallel.place_batch({"ids": ids, "mask": mask}, mesh)
    got_h, got_attn = sharded(placed["ids"], placed["mask"], return_attention=True)
    assert_close(np.asarray(got_h), np.asarray(want_h), F32, "modern hidden states")
    for i, (got, want) in enumerate(zip(got_attn, want_attn, strict=True)):
        assert_close(np.asarray(got), np.asarray(want), F32, f"modern attention, layer {i}")
    k = sharded.encoder.layers[0].attention.k.kernel
    assert k.sharding.spec[1] == "model"  # K/V split by whole K/V heads


def _loss(model, ids, mask):
    return jnp.mean(jnp.square(model(ids, mask)))


@pytest.mark.parametrize(("data", "model", "fsdp"), MESHES)
def test_sharded_gradients_of_every_parameter_equal_one_device(data, model, fsdp):
    single, sharded, mesh = _pair(CFG, data, model, fsdp)
    ids, mask, _ = make_inputs(CFG, 4, 8, seed=3, pad="some")
    ids, mask = ids.astype(np.int32), mask.astype(np.int32)
    want = nnx.grad(_loss)(single, ids, mask)
    placed = parallel.place_batch((ids, mask), mesh)
    got = jax.jit(nnx.grad(_loss))(sharded, *placed)
    want_leaves = dict(nnx.to_flat_state(want))
    got_leaves = dict(nnx.to_flat_state(got))
    assert want_leaves.keys() == got_leaves.keys() and len(want_leaves) > 0
    for path, value in want_leaves.items():
        assert_close(np.asarray(got_leaves[path][...]), np.asarray(value[...]), F32, str(path))


TRAIN = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=20, max_grad_norm=0.5)
TASK = TaskConfig(task="seen_before", vocab_size=CFG.vocab_size, seq_len=8)


def _trainer(mesh=None, fsdp=False) -> jt.Trainer:
    model = jt.build_model(CFG, TASK, rngs=nnx.Rngs(0))
    if mesh is not None:
        parallel.parallelize(model, mesh, fsdp=fsdp)
    return jt.Trainer(model, TRAIN)


@pytest.mark.parametrize(("data", "model", "fsdp"), MESHES[2:4])
def test_ten_adamw_steps_with_clipping_equal_one_device(data, model, fsdp):
    """The train step of jax_impl/train.py on a sharded task model: per-step losses, and the
    final weights, as on one device. The clipping threshold is low enough to clip."""
    mesh = parallel.make_mesh(data=data, model=model)
    single, sharded = _trainer(), _trainer(mesh, fsdp)
    dataset = Dataset(TASK, batch_size=4, seed=0)
    norms = []
    for step in range(10):
        batches = dataset.batches(step, 1)
        want_loss, norm = single.step(batches)
        got_loss, _ = sharded.step([parallel.place_batch(b, mesh) for b in batches])
        norms.append(norm)
        assert_close(np.float32(got_loss), np.float32(want_loss), F32, f"loss at step {step}")
    assert max(norms) > TRAIN.max_grad_norm  # clipping did act
    want = jt.export_task_weights(single.model)
    got = jt.export_task_weights(sharded.model)
    for name in want:
        assert_close(got[name], want[name], tolerance("float32"), f"{name} after 10 steps")
    leaf = sharded.opt_state[0].mu["encoder"]["encoder"]["layers"][0]["attention"]["q"]["kernel"]
    assert len(leaf[...].sharding.device_set) == 4  # optimizer state lives on the mesh


def test_dropout_masks_under_sharding_equal_one_device():
    """JAX's partitionable threefry draws the same bits whatever the sharding, so dropout in
    train mode gives the same outputs sharded as on one device (to rounding)."""
    cfg = CFG.replace(dropout=0.3)
    weights = random_weights(cfg, seed=4)
    single = jax_impl.from_weights(weights, cfg, rngs=nnx.Rngs(7))
    mesh = parallel.make_mesh(data=2, model=2)
    sharded = jax_impl.from_weights(weights, cfg, rngs=nnx.Rngs(7))
    parallel.parallelize(sharded, mesh)
    single.train()
    sharded.train()
    ids, _, _ = make_inputs(cfg, 4, 8, seed=5)
    ids = ids.astype(np.int32)
    want = np.asarray(single(ids))
    got = np.asarray(sharded(parallel.place_batch(ids, mesh)))
    single.eval()
    assert np.abs(want - np.asarray(single(ids))).max() > 0.1  # dropout did change outputs
    assert_close(got, want, F32, "dropout outputs, sharded vs one device")


def test_sharded_save_loads_on_one_device_bit_exactly_and_back(tmp_path):
    weights = random_weights(CFG, seed=6)
    mesh = parallel.make_mesh(data=2, model=2)
    sharded = parallel.parallelize(jax_impl.from_weights(weights, CFG), mesh, fsdp=True)
    parallel.save(sharded, tmp_path / "sharded.safetensors")
    loaded = jax_impl.export_weights(jax_impl.load(tmp_path / "sharded.safetensors"))
    assert loaded.keys() == weights.keys()
    for name in weights:
        assert np.array_equal(loaded[name], weights[name].astype(np.float32)), name
    jax_impl.save(jax_impl.from_weights(weights, CFG), tmp_path / "one.safetensors")
    on_mesh = parallel.load(tmp_path / "one.safetensors", mesh, fsdp=True)
    q = on_mesh.encoder.layers[0].attention.q.kernel.get_value()
    assert len(q.sharding.device_set) == 4
    back = jax_impl.export_weights(on_mesh)
    for name in weights:
        assert np.array_equal(back[name], weights[name].astype(np.float32)), name


def test_values_of_sharded_inputs_are_not_read_but_shapes_are_checked():
    """The input checks read values only from host arrays: a batch sharded over devices is
    checked for shape and dtype only, so an out-of-range id is not caught (it comes out NaN,
    as under jit); the same ids from NumPy are caught."""
    mesh = parallel.make_mesh(data=2, model=1)
    ids = np.ones((2, 4), np.int32)
    ids[1, 1] = CFG.vocab_size
    placed = parallel.place_batch(ids, mesh)
    assert jax_impl.encoder._values(placed) == Spec((2, 4), "i")
    model = parallel.parallelize(jax_impl.from_weights(random_weights(CFG), CFG), mesh)
    assert np.isnan(np.asarray(model(placed))[1]).all()
    with pytest.raises(ValueError, match=re.escape("got min 1, max 32")):
        model(ids)
    with pytest.raises(ValueError, match=re.escape("input_ids must have shape (batch, seq_len)")):
        model(placed[0])


def test_bad_meshes_and_splits_name_what_was_expected_and_what_was_got():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "data=4 x model=2 x seq=1 needs 8 devices, got 4: cpu:0, cpu:1, cpu:2, cpu:3"
        ),
    ):
        parallel.make_mesh(data=4, model=2)
    with pytest.raises(
        ValueError, match=re.escape("n_heads=4 is not divisible by the mesh's model=3")
    ):
        parallel.parallelize(
            jax_impl.from_weights(random_weights(CFG), CFG), parallel.make_mesh(model=3)
        )
    cfg = CFG.replace(d_ff=34)
    with pytest.raises(
        ValueError, match=re.escape("d_ff=34 is not divisible by the mesh's model=4")
    ):
        parallel.parallelize(
            jax_impl.from_weights(random_weights(cfg), cfg), parallel.make_mesh(model=4)
        )
    with pytest.raises(
        ValueError, match=re.escape("batch=3 is not divisible by the mesh's data=2")
    ):
        parallel.place_batch(np.zeros((3, 4), np.int32), parallel.make_mesh(data=2))
    other = jax.make_mesh((2, 2), ("x", "y"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with pytest.raises(
        ValueError, match=re.escape("mesh axes must be ('data', 'model', 'seq'), got ('x', 'y')")
    ):
        parallel.parallelize(jax_impl.from_weights(random_weights(CFG), CFG), other)


def _save_for_torch(name: str, array: np.ndarray) -> None:
    """Sharded JAX outputs, for test_parallel.py to compare with sharded PyTorch."""
    folder = os.environ.get("TWIN_MESH_OUTPUTS")
    if folder:
        np.save(os.path.join(folder, f"{name}.npy"), array)
