"""Many devices: the shared plan, JAX on 4 host devices, PyTorch on 2 and 4 gloo processes.

JAX's device count is fixed when it starts, so its cases (parity_tests/mesh_jax_cases.py)
run in a child pytest with 4 host devices; this file launches it once and reports its
output. PyTorch's cases run in processes started by ``torch_impl.parallel.launch`` (the
workers live in parity_tests/mesh_torch_workers.py, importable, as ``mp.spawn`` needs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torch_impl
import torch_impl.train as tt
from parity_tests import mesh_torch_workers as W
from parity_tests.helpers import make_inputs, random_weights, run_jax_cases, tiny_config
from shared import parallel as plan
from shared.data import Dataset
from shared.layouts import LAYOUTS
from shared.tolerances import assert_close, tolerance
from shared.weights import expected_shapes
from torch_impl import parallel

ROOT = Path(__file__).resolve().parent.parent
CFG = tiny_config()


# ---------------------------------------------------------------------------------------------
# The plan


def test_plan_splits_attention_and_ffn_megatron_style_and_replicates_the_rest():
    specs = {name: plan.spec(name, shape) for name, shape in expected_shapes(CFG).items()}
    assert specs["layers.1.attention.q.weight"] == (None, "model")  # output columns
    assert specs["layers.1.attention.v.bias"] == ("model",)
    assert specs["layers.0.ffn.in.weight"] == (None, "model")
    assert specs["layers.0.attention.out.weight"] == ("model", None)  # input rows
    assert specs["layers.0.attention.out.bias"] == (None,)  # added once, after the reduce
    assert specs["layers.0.ffn.out.weight"] == ("model", None)
    assert specs["embeddings.token.weight"] == (None, None)
    assert specs["layers.0.norm2.weight"] == (None,)
    split = [n for n, s in specs.items() if "model" in s]
    assert len(split) == CFG.n_layers * 10  # q, k, v, ffn.in (weight, bias); out, ffn.out weights


def test_plan_with_fsdp_shards_the_embed_axis_along_data_when_it_divides():
    """FSDP's rules put "data" on a table's rows, on another tensor's "embed" axis, else on
    its "heads" or "mlp" axis."""

    def spec(name):
        return plan.spec(name, expected_shapes(CFG)[name], fsdp=True, data=2, model=2)

    assert spec("layers.0.attention.q.weight") == ("data", "model")  # (embed, heads)
    assert spec("layers.0.attention.q.bias") == (("model", "data"),)  # (heads,)
    assert spec("layers.0.attention.out.weight") == ("model", "data")  # (heads, embed)
    assert spec("embeddings.token.weight") == ("data", None)  # (vocab, embed_table)
    assert spec("layers.0.norm1.bias") == ("data",)
    odd = plan.spec("embeddings.token.weight", (33, 16), fsdp=True, data=2, model=1)
    assert odd == (None, None)  # 33 rows do not split in two: whole (FSDP2 would pad)


def test_plan_rules_name_logical_axes_and_every_tensor_has_them():
    """The plan is rules on logical axes; tensor parallelism is heads and mlp on "model"."""
    assert plan.TENSOR_PARALLEL == (("heads", "model"), ("kv_heads", "model"), ("mlp", "model"))
    assert plan.rules(fsdp=True)[: len(plan.TENSOR_PARALLEL)] == plan.TENSOR_PARALLEL
    assert plan.tensor_parallel_style("layers.3.attention.k.weight") == plan.COLUMNS
    assert plan.tensor_parallel_style("layers.3.ffn.out.weight") == plan.ROWS
    assert plan.tensor_parallel_style("embeddings.token.weight") == plan.REPLICATED
    with pytest.raises(ValueError, match=r"'layers\.0\.attention\.qkv\.weight' is not a tensor"):
        plan.spec("layers.0.attention.qkv.weight", (16, 48))
    with pytest.raises(ValueError, match=r"expected a shape of 2 axes, got \(16,\)"):
        plan.spec("layers.0.attention.q.weight", (16,))


def test_head_aligned_columns_give_each_model_rank_whole_heads():
    """Head h is columns h*hd:(h+1)*hd of q; splitting D columns in M equal blocks gives rank
    r the heads r*H/M .. (r+1)*H/M - 1 exactly when M divides H."""
    hd, m = CFG.head_dim, 2
    block = CFG.d_model // m
    assert block % hd == 0
    assert [list(range(r * block // hd, (r + 1) * block // hd)) for r in range(m)] == [
        [0, 1],
        [2, 3],
    ]
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by the mesh's model=3"):
        plan.check_model_split(CFG, 3)


def test_plan_for_a_modern_layer_splits_kv_heads_and_both_glu_projections():
    """GQA K/V columns by whole K/V heads, gate and input projections alike (columns), the
    q/k norm weights and RMSNorm scales replicated; n_kv_heads must divide by "model"."""
    cfg = tiny_config(
        n_heads=4, n_kv_heads=2, positional="rope", qk_norm=True, gated_ffn=True,
        norm="rms_norm", norm_bias=False, attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    shapes = expected_shapes(cfg)
    specs = {name: plan.spec(name, shape, model=2) for name, shape in shapes.items()}
    assert shapes["layers.0.attention.k.weight"] == (cfg.d_model, 2 * cfg.head_dim)
    assert specs["layers.0.attention.k.weight"] == (None, "model")
    assert specs["layers.0.ffn.gate.weight"] == specs["layers.0.ffn.in.weight"] == (None, "model")
    assert specs["layers.0.attention.q_norm.weight"] == (None,)
    assert specs["layers.0.norm1.weight"] == (None,)
    assert plan.tensor_parallel_style("layers.0.ffn.gate.weight") == plan.COLUMNS
    plan.check_model_split(cfg, 2)
    with pytest.raises(ValueError, match="n_kv_heads=2 is not divisible by the mesh's model=4"):
        plan.check_model_split(cfg, 4)


def test_collective_bytes_by_hand_for_a_tiny_step():
    """B=4, T=8, D=16, float32, 2 layers. TP: 2 all-reduces of (B/data, T, D) per layer forward,
    as many backward. DP: the gradients one device holds."""
    got = plan.collective_bytes(CFG, batch=4, seq_len=8, data=2, model=2)
    activation = 2 * 8 * 16 * 4  # (B/data, T, D) float32
    assert got["tp_activations"] == 2 * 2 * 2 * activation
    d, f, v = 16, 32, 32
    split = 4 * d * d + 3 * d + 2 * d * f + f  # q, k, v, out, ffn weights; q, k, v, ffn.in bias
    whole = 6 * d  # out and ffn.out biases, two norms
    assert got["dp_gradients"] == 4 * (2 * (split // 2 + whole) + v * d)
    assert got["fsdp_params"] == 0
    fwd = plan.collective_bytes(CFG, batch=4, seq_len=8, data=1, model=2, phase="forward")
    assert fwd == {"tp_activations": 2 * 2 * (4 * 8 * 16 * 4), "dp_gradients": 0, "fsdp_params": 0}


def test_bad_mesh_shapes_name_what_was_expected_and_what_was_got():
    with pytest.raises(
        ValueError, match=r"mesh axes must be \('data', 'model', 'seq'\), got \('x',\)"
    ):
        plan.check_mesh(("x",), (2,), ["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match="needs 4 devices, got 2: cpu:0, cpu:1"):
        plan.check_mesh(plan.AXES, (2, 2, 1), ["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match="d_ff=30 is not divisible by the mesh's model=4"):
        plan.check_model_split(CFG.replace(d_ff=30), 4)
    with pytest.raises(ValueError, match="batch=5 is not divisible by the mesh's data=2"):
        plan.check_batch(5, 2)


# ---------------------------------------------------------------------------------------------
# JAX: 4 host devices, in a child process


@pytest.fixture(scope="module")
def jax_mesh_outputs(tmp_path_factory) -> Path:
    """Run mesh_jax_cases.py on 4 host devices; its sharded outputs land in the folder."""
    folder = tmp_path_factory.mktemp("jax-mesh")
    rc, log = run_jax_cases("mesh_jax_cases.py", env={"TWIN_MESH_OUTPUTS": str(folder)})
    folder.joinpath("log.txt").write_text(log)
    folder.joinpath("rc").write_text(str(rc))
    return folder


def test_jax_on_4_host_devices_matches_one_device(jax_mesh_outputs):
    """Outputs, attention weights, gradients, 10 AdamW steps, dropout, checkpoints and bad
    input, on meshes data=4, model=4, data=2 x model=2, with and without fsdp."""
    log = jax_mesh_outputs.joinpath("log.txt").read_text()
    assert jax_mesh_outputs.joinpath("rc").read_text() == "0", log[-6000:]
    assert " passed" in log and "failed" not in log and "skipped" not in log, log[-3000:]
    assert len(list(jax_mesh_outputs.glob("forward-*.npy"))) == 7


# ---------------------------------------------------------------------------------------------
# PyTorch: 2 and 4 gloo processes

TORCH_MESHES = [
    pytest.param((2, 1, False), id="data2"),
    pytest.param((1, 2, False), id="model2"),
    pytest.param((2, 2, False), id="data2xmodel2"),
    pytest.param((2, 2, True), id="data2xmodel2-fsdp"),
]
F32 = tolerance("float32")


@pytest.fixture(scope="module", params=TORCH_MESHES)
def torch_run(request, tmp_path_factory):
    """Every PyTorch case on one mesh, run in one launch: ``(folder, data, model, fsdp)``."""
    data, model, fsdp = request.param
    folder = tmp_path_factory.mktemp(f"torch-{data}x{model}{'-fsdp' if fsdp else ''}")
    torch_impl.save(
        torch_impl.from_weights(random_weights(W.CFG, seed=6), W.CFG), folder / "one.safetensors"
    )
    parallel.launch(W.run_cases, data * model, str(folder), data, model, fsdp, timeout_s=300)
    return folder, data, model, fsdp


def _by_data_rank(folder: Path, prefix: str) -> dict[int, dict[str, np.ndarray]]:
    files = [np.load(f) for f in sorted(folder.glob(f"{prefix}-*.npz"))]
    return {int(f["data_rank"]): dict(f) for f in files}


def _global(folder: Path, prefix: str, key: str) -> np.ndarray:
    """The global batch of ``key`` from the ranks' files: rows by data rank."""
    parts = _by_data_rank(folder, prefix)
    return np.concatenate([parts[r][key] for r in sorted(parts)])


def _global_heads(folder: Path, key: str, prefix: str = "forward") -> np.ndarray:
    """Attention weights (B, H, T, S) from the ranks' files: rows by data rank, heads by
    model rank (under tensor parallelism each rank computes only its own heads)."""
    parts: dict[int, dict[int, np.ndarray]] = {}
    for f in sorted(folder.glob(f"{prefix}-*.npz")):
        rank = np.load(f)
        parts.setdefault(int(rank["data_rank"]), {})[int(rank["model_rank"])] = rank[key]
    rows = [np.concatenate([p[m] for m in sorted(p)], axis=1) for _, p in sorted(parts.items())]
    return np.concatenate(rows)  # (B, H, T, S)


def test_torch_sharded_outputs_and_attention_weights_equal_one_device(torch_run):
    folder, *_ = torch_run
    ids, mask = W.forward_inputs()
    single = torch_impl.from_weights(random_weights(W.CFG, seed=1), W.CFG)
    with torch.no_grad():
        want_h, want_attn = single(ids, mask, return_attention=True)
    assert_close(_global(folder, "forward", "h"), want_h.numpy(), F32, "hidden states")
    for i, want in enumerate(want_attn):
        got = _global_heads(folder, f"attention{i}")
        assert_close(got, want.numpy(), F32, f"attention weights, layer {i}")


def test_torch_a_modern_encoder_sharded_equals_one_device(torch_run):
    """GQA (K/V heads split whole across "model"), RoPE, a sliding window, q/k norm, SwiGLU
    and RMSNorm without biases: hidden states and every head's weights as on one device."""
    folder, _, model, _ = torch_run
    ids, mask, _ = make_inputs(W.MODERN, W.BATCH, 8, seed=2, pad="some")
    single = torch_impl.from_weights(random_weights(W.MODERN, seed=3), W.MODERN)
    with torch.no_grad():
        want_h, want_attn = single(ids, mask, return_attention=True)
    assert_close(_global(folder, "modern", "h"), want_h.numpy(), F32, "modern hidden states")
    for i, want in enumerate(want_attn):
        got = _global_heads(folder, f"attention{i}", "modern")
        assert_close(got, want.numpy(), F32, f"modern attention weights, layer {i}")
    if model > 1:  # K/V split by whole K/V heads: k.weight's rows (out features)
        placements = str(np.load(folder / "modern-0.npz")["k_placements"])
        assert "Shard(dim=0)" in placements, placements


def test_torch_sharded_gradients_of_every_parameter_equal_one_device(torch_run):
    folder, *_ = torch_run
    ids, mask = W.forward_inputs()
    single = torch_impl.from_weights(random_weights(W.CFG, seed=1), W.CFG).train()
    single(ids, mask).square().mean().backward()
    got = np.load(folder / "gradients.npz")
    table = torch_impl.parameter_table(single)
    assert set(got.files) == {name for name, _, _ in table}
    for name, param, layout in table:
        (want,) = LAYOUTS[layout].split(param.grad.numpy(), 1)
        assert_close(got[name], want, F32, f"gradient of {name}")


def test_torch_ten_adamw_steps_with_clipping_equal_one_device(torch_run):
    """torch_impl/train.py's Trainer, sharded: per-step losses and final weights. Each rank
    averages its own rows, DDP/FSDP average the ranks: with equal rows per rank (a
    per-sequence task) that is the global mean."""
    folder, *_ = torch_run
    trainer = tt.Trainer(W.task_model(), W.TRAIN)
    dataset = Dataset(W.TASK, batch_size=W.BATCH, seed=0)
    norms, losses = [], []
    for step in range(10):
        loss, norm = trainer.step([dataset.batch(step)])
        losses.append(loss)
        norms.append(norm)
    assert max(norms) > W.TRAIN.max_grad_norm  # clipping did act
    got = np.load(folder / "train.npz")
    assert_close(got["losses"], np.array(losses), F32, "per-step losses")
    want = tt.export_task_weights(trainer.model)
    for name in want:
        assert_close(got[name], want[name], F32, f"{name} after 10 steps")


def test_torch_sharded_save_loads_on_one_device_bit_exactly_and_back(torch_run):
    folder, *_ = torch_run
    weights = {k: v.astype(np.float32) for k, v in random_weights(W.CFG, seed=6).items()}
    saved = torch_impl.export_weights(torch_impl.load(folder / "sharded.safetensors"))
    loaded = np.load(folder / "loaded.npz")
    assert saved.keys() == weights.keys() == set(loaded.files)
    for name in weights:
        assert np.array_equal(saved[name], weights[name]), name
        assert np.array_equal(loaded[name], weights[name]), name


def test_torch_and_jax_sharded_on_the_same_mesh_agree(torch_run, jax_mesh_outputs):
    folder, data, model, fsdp = torch_run
    jax_file = jax_mesh_outputs / f"forward-{data}x{model}{'-fsdp' if fsdp else ''}.npy"
    assert_close(_global(folder, "forward", "h"), np.load(jax_file), F32, "torch vs jax")


def test_torch_dropout_under_sharding_is_drawn_per_rank(torch_run):
    """What holds in PyTorch, and no more. Our dropout acts on whole activations (after the
    row-parallel all-reduce), plain tensors drawn from each process's own generator; it never
    goes through DTensor's random ops (which on a CPU mesh do not match one device either).
    Seeded alike, the "model" ranks of a data rank draw the same masks, so their replicated
    activations stay equal, and with one data rank those are one device's masks; a data rank
    draws masks for its own rows, so with several the masks are not one device's."""
    folder, data, model, _ = torch_run
    ranks = [np.load(f) for f in sorted(folder.glob("dropout-*.npz"))]
    assert len(ranks) == data * model
    for r in ranks:
        same_data = [o for o in ranks if int(o["data_rank"]) == int(r["data_rank"])]
        for other in same_data:
            assert np.array_equal(r["h"], other["h"])  # model ranks agree exactly
    cfg = W.CFG.replace(dropout=0.3)
    single = torch_impl.from_weights(random_weights(cfg, seed=4), cfg).train()
    ids, _ = W.forward_inputs()
    torch.manual_seed(7)
    with torch.no_grad():
        want = single(ids).numpy()
    got = _global(folder, "dropout", "h")
    if data == 1:
        assert_close(got, want, F32, "dropout outputs, model ranks vs one device")
    else:
        assert np.abs(got - want).max() > 0.1  # not one device's masks


def test_a_rank_that_raises_fails_the_launch_naming_it_and_the_others_end():
    """Rank 1 raises while rank 0 waits in a barrier that can never complete: the launcher
    names rank 1 and its error, and ends rank 0 (well within the timeout)."""
    with pytest.raises(
        RuntimeError, match=r"^rank 1 failed[^:]*: RuntimeError: rank 1 found a bad batch"
    ):
        parallel.launch(W.fail_on_rank_1, 2, timeout_s=60)


def test_torch_bad_meshes_splits_and_batches_name_what_was_expected_and_got(tmp_path):
    parallel.launch(W.bad_inputs, 2, str(tmp_path), timeout_s=120)
    errors = dict(np.load(tmp_path / "errors.npz"))
    assert str(errors["too_many"]) == (
        "mesh data=4 x model=2 x seq=1 needs 8 devices, got 2: cpu rank 0, cpu rank 1"
    )
    assert str(errors["heads"]).startswith("n_heads=1 is not divisible by the mesh's model=2")
    assert str(errors["d_ff"]) == "d_ff=33 is not divisible by the mesh's model=2"
    assert str(errors["batch"]).startswith("batch=3 is not divisible by the mesh's data=2")


def test_torch_parallelize_without_a_process_group_says_how_to_start_one():
    with pytest.raises(ValueError, match=r"parallelize needs a torch\.distributed process group"):
        parallel.parallelize(torch_impl.TransformerEncoder(CFG), mesh=None)
    with pytest.raises(ValueError, match=r"make_mesh needs a torch\.distributed process group"):
        parallel.make_mesh(data=2)
