"""Many devices: the shared plan, JAX on 4 host devices, PyTorch on 2 and 4 gloo processes.

JAX's device count is fixed when it starts, so its cases (parity_tests/mesh_jax_cases.py)
run in a child pytest with 4 host devices; this file launches it once and reports its
output. PyTorch's cases run in processes started by ``torch_impl.parallel.launch`` (the
workers live in parity_tests/mesh_torch_workers.py, importable, as ``mp.spawn`` needs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import EncoderConfig
from shared import parallel as plan
from shared.weights import expected_shapes

ROOT = Path(__file__).resolve().parent.parent
CFG = EncoderConfig(
    vocab_size=32, d_model=16, n_heads=4, d_ff=32, n_layers=2, max_len=16, dropout=0.0
)


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


def test_plan_with_fsdp_shards_pytorchs_dim_0_along_data_when_it_divides():
    def spec(name):
        return plan.spec(name, expected_shapes(CFG)[name], fsdp=True, data=2, model=2)

    assert spec("layers.0.attention.q.weight") == (None, ("model", "data"))  # PyTorch (out, in)
    assert spec("layers.0.attention.out.weight") == ("model", "data")
    assert spec("embeddings.token.weight") == ("data", None)
    assert spec("layers.0.norm1.bias") == ("data",)
    odd = plan.spec("embeddings.token.weight", (33, 16), fsdp=True, data=2, model=1)
    assert odd == (None, None)  # 33 rows do not split in two: whole (FSDP2 would pad)


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
    with pytest.raises(ValueError, match=r"mesh axes must be \('data', 'model'\), got \('x',\)"):
        plan.check_mesh(("x",), (2,), ["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match="needs 4 devices, got 2: cpu:0, cpu:1"):
        plan.check_mesh(plan.AXES, (2, 2), ["cpu:0", "cpu:1"])
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
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "TWIN_MESH_OUTPUTS": str(folder),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "pytest", "parity_tests/mesh_jax_cases.py", "-q"]
    done = subprocess.run(
        [*cmd, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    folder.joinpath("log.txt").write_text(done.stdout + done.stderr)
    folder.joinpath("rc").write_text(str(done.returncode))
    return folder


def test_jax_on_4_host_devices_matches_one_device(jax_mesh_outputs):
    """Outputs, attention weights, gradients, 10 AdamW steps, dropout, checkpoints and bad
    input, on meshes data=4, model=4, data=2 x model=2, with and without fsdp."""
    log = jax_mesh_outputs.joinpath("log.txt").read_text()
    assert jax_mesh_outputs.joinpath("rc").read_text() == "0", log[-6000:]
    assert " passed" in log and "failed" not in log and "skipped" not in log, log[-3000:]
    assert len(list(jax_mesh_outputs.glob("forward-*.npy"))) == 5
