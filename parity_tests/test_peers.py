"""The benchmark peers compute our encoder: keras-hub's BERT == transformers' BERT == ours.

On a tiny BERT (d_model 32, 2 layers, T 16, GELU's tanh approximation, the activation
keras-hub's BertBackbone computes) with one padded sequence, from the same format-v1 weights:
``transformers.BertModel`` (sdpa and eager attention, written by ``shared.hf.save``),
keras-hub's ``BertBackbone`` on Keras's JAX and torch backends (assigned through the table of
``shared/keras_hub.py``), and our PyTorch encoder all match the float64 NumPy reference, and
each other, within the float32 row of ``shared/tolerances.py``. keras-hub's own conversion
tests leave this comparison open.

Keras reads ``KERAS_BACKEND`` once per process: each backend runs in a child process, with a
time limit, which also reports whether TensorFlow was imported (it must not be: keras-hub is
installed without its TensorFlow requirement). Tests of a peer skip, saying why, where its
package is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_impl
from benchmarks import peers
from benchmarks.suites import SUITES, Selection, expand
from benchmarks.variants import REGISTRY, Variant
from parity_tests.helpers import make_inputs
from shared import keras_hub as keras_table
from shared import layouts, reference
from shared.config import EncoderConfig
from shared.tolerances import assert_close, tolerance

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 300
TINY = EncoderConfig(
    vocab_size=97,
    d_model=32,
    n_heads=2,
    d_ff=64,
    n_layers=2,
    max_len=16,
    dropout=0.0,
    positional="learned",
    type_vocab_size=2,
    embed_norm=True,
    layer_norm_eps=1e-12,
    activation="gelu_tanh",
    norm_first=False,
)
T = 16
F32 = tolerance("float32", "cpu")

needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras_hub") is None or importlib.util.find_spec("keras") is None,
    reason="the peers extra is not installed (keras, keras-hub)",
)
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the hf extra is not installed"
)


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return reference.init_weights(TINY, seed=3)


@pytest.fixture(scope="module")
def inputs():
    """(ids, mask, types): the second sequence padded; types 0 as the benchmarks run."""
    ids, mask, _ = make_inputs(TINY, 2, T, seed=5, pad="some")
    mask[1, T // 2 :] = 0  # at least half of the second sequence is padding
    return ids.astype(np.int32), mask.astype(np.int32), np.zeros_like(ids, dtype=np.int32)


@pytest.fixture(scope="module")
def expected(weights, inputs) -> np.ndarray:
    """The float64 NumPy reference's last hidden state (B, T, D)."""
    ids, mask, types = inputs
    return np.asarray(reference.forward(weights, TINY, ids, mask, types).last_hidden_state)


def _real(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The real (unpadded) positions: outputs at padded queries are no part of the contract."""
    return h[mask.astype(bool)]


# --- the layout table (NumPy only) ---------------------------------------------------------


def test_keras_table_round_trip(weights):
    arrays = keras_table.to_keras(weights, TINY)
    assert arrays["transformer_layer_1/self_attention_layer/query/kernel"].shape == (32, 2, 16)
    assert arrays["transformer_layer_1/self_attention_layer/query/bias"].shape == (2, 16)
    assert arrays["transformer_layer_0/self_attention_layer/attention_output/kernel"].shape == (
        2,
        16,
        32,
    )
    back = keras_table.from_keras(arrays, TINY)
    assert sorted(back) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_keras_table_checks_shapes(weights):
    shapes = {k: a.shape for k, a in keras_table.to_keras(weights, TINY).items()}
    shapes["transformer_layer_0/feedforward_output_dense/kernel"] = (32, 64)  # transposed
    with pytest.raises(layouts.CheckpointError, match=r"ffn\.out\.weight"):
        keras_table.to_keras(weights, TINY, shapes)


@pytest.mark.parametrize(
    ("field", "value"),
    [("activation", "gelu"), ("norm_first", True), ("layer_norm_eps", 1e-5)],
)
def test_keras_table_refuses_what_bert_backbone_cannot_compute(field, value):
    cfg = dataclasses.replace(TINY, **{field: value})
    with pytest.raises(ValueError, match=f"{field}="):
        keras_table.backbone_kwargs(cfg)


# --- the peers against the reference --------------------------------------------------------


def _hf_output(weights, inputs, attention: str) -> np.ndarray:
    from benchmarks.peers import hf

    ids, mask, types = (torch.from_numpy(a.astype(np.int64)) for a in inputs)
    model = hf.build(TINY, weights, torch.float32, attention=attention).eval()
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    return out.last_hidden_state.numpy()


@needs_transformers
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_hf_bert_equals_reference_and_ours(weights, inputs, expected, attention):
    ids, mask, types = inputs
    got = _hf_output(weights, inputs, attention)
    assert_close(_real(got, mask), _real(expected, mask), F32, f"hf {attention} vs reference")
    ours = torch_impl.from_weights(weights, TINY).eval()
    with torch.no_grad():
        h = ours(*(torch.from_numpy(a.astype(np.int64)) for a in (ids, mask, types)))
    assert_close(_real(got, mask), _real(h.numpy(), mask), F32, f"hf {attention} vs ours")


_KERAS_CHILD = """
import json, sys
import keras
import numpy as np
from benchmarks.peers import keras_bert
from shared.config import EncoderConfig
cfg = EncoderConfig.from_json(sys.argv[1])
folder = sys.argv[2]
weights = dict(np.load(folder + "/weights.npz"))
ids, mask = np.load(folder + "/ids.npy"), np.load(folder + "/mask.npy")
model = keras_bert.backbone(cfg, weights, "float32")
inputs = keras_bert.backbone_inputs(keras.ops.convert_to_tensor(ids))
inputs["padding_mask"] = keras.ops.convert_to_tensor(mask)
h = model(inputs)["sequence_output"]
h = h.detach().cpu().numpy() if hasattr(h, "detach") else np.asarray(h)
np.save(folder + "/out.npy", h)
print(json.dumps({"backend": keras.backend.backend(), "tensorflow": "tensorflow" in sys.modules}))
"""


def _keras_output(backend: str, weights, inputs, tmp_path: Path) -> tuple[np.ndarray, dict]:
    ids, mask, _ = inputs
    np.savez(tmp_path / "weights.npz", **weights)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _KERAS_CHILD, TINY.to_json(), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp_path / "out.npy"), json.loads(done.stdout.strip().splitlines()[-1])


@needs_keras
@needs_transformers
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_bert_equals_hf_bert_and_reference(weights, inputs, expected, backend, tmp_path):
    got, report = _keras_output(backend, weights, inputs, tmp_path)
    assert report == {"backend": backend, "tensorflow": False}
    _, mask, _ = inputs
    assert_close(_real(got, mask), _real(expected, mask), F32, f"keras ({backend}) vs reference")
    hf = _hf_output(weights, inputs, "sdpa")
    assert_close(_real(got, mask), _real(hf, mask), F32, f"keras ({backend}) vs hf")


# --- the benchmarks' peer rows ----------------------------------------------------------------


def test_peer_variants_run_where_their_model_exists():
    sel = Selection(frameworks=("torch", "jax"), device="cpu", variants=("hf", "keras"))
    cases = expand(SUITES["peers"], sel)
    assert {(c.framework, c.variant) for c in cases} == {
        ("torch", "hf"),
        ("torch", "keras"),
        ("jax", "keras"),
    }
    assert REGISTRY["keras"].own_process and not REGISTRY["hf"].own_process
    # the suite itself: every peer against ours at both shapes, keras-hub's train step on JAX
    suite = expand(SUITES["peers"], Selection(frameworks=("torch", "jax"), device="cpu"))
    assert {(c.batch, c.seq_len) for c in suite} == {(8, 128), (2, 512)}
    train = {(c.framework, c.variant) for c in suite if c.phase == "train_step"}
    assert train == {
        ("torch", "ours-fused"),
        ("torch", "hf"),
        ("jax", "ours-fused"),
        ("jax", "keras"),
    }
    # the other suites time ours and native only
    for name in ("quick", "standard", "full"):
        variants = {c.variant for c in expand(SUITES[name], Selection(("torch",), "cpu"))}
        assert variants.isdisjoint({"hf", "hf-eager", "keras"}), name


def test_missing_peer_package_is_a_reason(monkeypatch):
    v = Variant("keras", "keras", "keras", "", package="keras_hub")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "keras_hub" else real(name)
    )
    assert "keras_hub is not installed" in peers.missing(v)
    assert peers.missing(REGISTRY["ours-fused"]) is None


@needs_keras
@needs_transformers
def test_peer_rows_record_their_parity():
    """One eager forward row each of hf (this process) and keras on JAX (a child process),
    through the benchmarks' runner: each row's parity is against ours, within float32."""
    from benchmarks.run_jax import JaxRunner
    from benchmarks.run_torch import TorchRunner
    from benchmarks.runner import RunSettings, run_cases
    from benchmarks.suites import Case

    cases = [
        Case("torch", "hf", "eager", "forward", "cpu", "float32", 2, T),
        Case("jax", "keras", "eager", "forward", "cpu", "float32", 2, T),
    ]
    settings = RunSettings(
        config_name="tiny-bert",
        warmup=0,
        repeats=1,
        min_repeats=1,
        budget_s=1.0,
        seed=0,
        tf32=False,
        threads=1,
        warm_compile=False,
    )
    lines: list[str] = []
    result = run_cases(
        cases,
        cfg=TINY,
        runners={"torch": TorchRunner("cpu", threads=1), "jax": JaxRunner("cpu")},
        settings=settings,
        device_names={},
        log=lines.append,
    )
    assert not result.failures, result.failures
    assert [(r.framework, r.implementation, r.backend) for r in result.rows] == [
        ("torch", "hf", "sdpa"),
        ("jax", "keras", "keras"),
    ]
    for row in result.rows:
        assert row.parity_ok is True, (row, lines)
        assert row.parity_max_abs_diff is not None
        assert "against ours-fused" in row.notes


def test_peer_targets_are_peer_time_over_ours():
    from benchmarks.peers.targets import parity_lines, peer_targets

    def row(framework, implementation, backend, ms, **kw):
        return {
            "framework": framework,
            "implementation": implementation,
            "backend": backend,
            "mode": "compiled",
            "phase": "forward",
            "dtype": "float32",
            "batch": 8,
            "seq_len": 128,
            "median_ms": ms,
            "parity_max_abs_diff": kw.get("diff"),
            "parity_ok": kw.get("ok"),
        }

    rows = [
        row("torch", "ours", "fused", 100.0),
        row("torch", "hf", "sdpa", 120.0, diff=2e-6, ok=True),
        row("jax", "ours", "fused", 50.0),
        row("jax", "keras", "keras", 40.0, diff=1e-4, ok=False),
    ]
    found = {what: (ratio, target) for what, ratio, target in peer_targets(rows)}
    assert found["torch hf / ours-fused time, compiled forward B=8 T=128"] == (1.2, 1.0)
    assert found["jax keras / ours-fused time, compiled forward B=8 T=128"] == (0.8, 1.0)
    assert found["torch keras / ours-fused time, compiled forward B=8 T=128"] == (None, None)
    assert found["torch hf / ours-fused time, compiled train_step B=2 T=512"] == (None, 1.0)
    lines = parity_lines(rows)
    assert len(lines) == 2 and "OUTSIDE" in lines[1] and "2.0e-06 (within" in lines[0]


@needs_keras
def test_paired_timing_of_ours_and_keras_on_jax(tmp_path):
    """``python -m benchmarks.peers.paired``: both built, compiled and timed in turn."""
    config = tmp_path / "tiny-bert.json"
    config.write_text(TINY.to_json())
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.peers.paired", "--framework", "jax"),
            *("--peer", "keras", "--config", str(config), "--batch", "2"),
            *("--seq-len", str(T), "--repeats", "2"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("jax forward tiny-bert B=2 T=16, compiled, 2 interleaved rounds")
    assert [line.split()[0] for line in lines[1:3]] == ["ours-fused", "keras"]
    assert lines[3].strip().startswith("keras / ours-fused: wall ")


def test_paired_profile_counts_operator_calls_and_is_torch_only(capsys):
    """``--profile``: operator calls and CPU time by operator, from torch.profiler."""
    from benchmarks.peers import paired

    a, b = torch.ones(4, 4), torch.ones(4, 4)
    counts, text = paired.profile_torch(lambda: (a @ b) @ b)
    assert counts["aten::mm"] == 2 and counts["aten::matmul"] == 2
    assert text.startswith(f"{sum(counts.values())} operator calls, ") and "aten::mm" in text
    with pytest.raises(SystemExit):
        paired.main(["--framework", "jax", "--peer", "keras", "--profile"])
    assert "--profile reads torch.profiler: it needs --framework torch" in capsys.readouterr().err
