"""``twin-encoder check``: a good checkpoint passes with exit 0 and a table; a bug in one layer,
on one side only, fails with exit 1 and is named at the first layer it reaches.

The folders are tiny models that transformers builds offline from a config, every tensor
perturbed so that each one counts. The failing cases put a real fault where check must see
it: weights that one framework (or our loader, and so both frameworks) reads wrongly in
one layer, while the other side is right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jax_impl
import torch_impl
from shared import EncoderConfig, hf, reference
from twin_encoder import check

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40)
CONFIGS = {
    "bert": lambda: transformers.BertConfig(vocab_size=60, max_position_embeddings=16, **SMALL),
    "gpt2": lambda: transformers.GPT2Config(  # pre-norm, a final norm, causal
        vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_inner=40, n_positions=16
    ),
    "vit": lambda: transformers.ViTConfig(image_size=12, patch_size=4, **SMALL),
}


def _folder(name: str, folder: Path) -> Path:
    config = CONFIGS[name]()
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config).eval()
    with torch.no_grad():  # default init sets norms to (1, 0) and biases to 0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return _folder("bert", tmp_path_factory.mktemp("bert"))


def test_the_command_passes_a_good_folder_prints_the_table_and_writes_json(bert, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    argv = ["check", str(bert), "--json", "report.json", "--batch", "2", "--seq-len", "8"]
    run = subprocess.run(
        [sys.executable, "-m", "twin_encoder", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for title in ("jax vs torch", "torch vs transformers", "jax vs transformers"):
        assert f"{title}, float32-highest (atol 1e-05, rtol 1e-05)" in out
    assert out.count("  layer 2  ") == 3 and out.count("embedding  ") == 3
    assert "result: every layer within the tolerance table" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["within_tolerance"] is True and report["kind"] == "hf"
    assert report["inputs"]["shape"] == [2, 8]
    pairs = [(c["actual"], c["expected"]) for c in report["comparisons"]]
    assert pairs == [("jax", "torch"), ("torch", "transformers"), ("jax", "transformers")]
    for c in report["comparisons"]:
        assert len(c["hidden_states"]) == 3 and len(c["attention"]) == 2
        assert c["first_out_of_tolerance"] is None
        assert 0 < max(d["max_abs"] for d in c["hidden_states"]) < 1e-5  # rounding, not 0


@pytest.mark.parametrize("name", ["gpt2", "vit"])
def test_families_with_a_final_norm_or_images_pass_against_transformers(name, tmp_path):
    """GPT-2's hidden states end after ln_f in transformers, ViT takes pixels: the last row is
    the encoder's output on both sides."""
    report = check.check(_folder(name, tmp_path / name), batch=2, seq_len=8)
    assert [c.expected for c in report.comparisons] == ["torch", "transformers", "transformers"]
    assert report.within_tolerance, report.format()
    if name == "vit":  # the images set T: the 8 asked is not what ran, and the report says so
        assert report.input_shape == (2, 3, 12, 12)
        assert (
            report.notes
            and "(C, H, W) = (3, 12, 12) in patches of 4 is 10 tokens" in (report.notes[0])
        )
    else:
        assert report.notes == ()


def test_a_seq_len_beyond_the_position_table_runs_shorter_and_says_so(bert):
    """BERT's learned table has 16 rows here: asking for 40 tokens runs 16, never silently."""
    report = check.check(bert, batch=2, seq_len=40, with_transformers=False)
    assert report.input_shape == (2, 16)
    assert report.notes == (
        "ran at T=16, not the 40 asked: the learned position table has room for 16 positions",
    )
    assert "note: ran at T=16, not the 40 asked" in report.format()
    assert report.to_dict()["notes"] == list(report.notes)


def _perturbed(weights: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    weights = dict(weights)
    weights[name] = weights[name] + 0.05 * np.sign(weights[name] + 1e-12)
    return weights


def test_a_loader_fault_in_layer_2_fails_against_transformers(bert, tmp_path, monkeypatch, capsys):
    """Our loader reads layer 2's feed-forward output bias wrongly: both frameworks agree
    with each other, and transformers shows the fault from layer 2's hidden state on."""
    load = hf.load
    monkeypatch.setattr(hf, "load", lambda f: _with_cfg(load(f), "layers.1.ffn.out.bias"))
    status = check.main([str(bert), "--json", str(tmp_path / "r.json"), "--batch", "2"])
    assert status == 1
    printed = capsys.readouterr().out
    assert "OUT OF TOLERANCE from hidden_states[2]" in printed
    assert "result: some layer is OUTSIDE the tolerance table" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    first = {
        (c["actual"], c["expected"]): c["first_out_of_tolerance"] for c in report["comparisons"]
    }
    assert first == {
        ("jax", "torch"): None,
        ("torch", "transformers"): "hidden_states[2]",
        ("jax", "transformers"): "hidden_states[2]",
    }
    assert report["within_tolerance"] is False


def _with_cfg(loaded, name):
    weights, cfg = loaded
    return _perturbed(weights, name), cfg


def test_a_framework_fault_in_one_layer_fails_a_checkpoint(tmp_path, monkeypatch, capsys):
    """JAX alone reads layer 2's query weights wrongly: its attention weights of layer 2 are
    the first thing out of tolerance; everything before them is within it."""
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=2, dropout=0.0)
    path = tmp_path / "model.safetensors"
    torch_impl.save(torch_impl.from_weights(reference.init_weights(cfg, seed=4), cfg), path)
    assert check.main([str(path), "--batch", "2", "--seq-len", "8"]) == 0  # as saved: fine
    capsys.readouterr()

    from_weights = jax_impl.from_weights
    monkeypatch.setattr(
        jax_impl,
        "from_weights",
        lambda w, c, **kw: from_weights(_perturbed(w, "layers.1.attention.q.weight"), c, **kw),
    )
    report = check.check(path, batch=2, seq_len=8)
    (c,) = report.comparisons
    assert (c.actual, c.expected) == ("jax", "torch")
    assert c.first_out_of_tolerance.name == "attention[1]"
    assert all(d.within(c.tolerance) for d in [*c.hidden[:2], c.attention[0]])
    assert check.main([str(path), "--batch", "2", "--seq-len", "8"]) == 1
    assert "OUT OF TOLERANCE from attention[1]" in capsys.readouterr().out


def test_a_sharded_checkpoint_folder_is_checked_and_an_empty_folder_is_a_usage_error(tmp_path):
    import torch_impl.checkpoint

    cfg = EncoderConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_layers=1, dropout=0.0)
    model = torch_impl.from_weights(reference.init_weights(cfg, 0), cfg)
    torch_impl.checkpoint.save_sharded(model, tmp_path / "ckpt")
    report = check.check(tmp_path / "ckpt", batch=2, seq_len=8)
    assert report.kind == "checkpoint" and report.config == cfg
    assert [c.expected for c in report.comparisons] == ["torch"] and report.within_tolerance
    (tmp_path / "empty").mkdir()
    assert check.main([str(tmp_path / "empty")]) == 2
