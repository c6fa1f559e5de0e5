"""Whole encoders built from the parts of 2021 on, in both frameworks, against the float64
oracle (``shared/reference.py``) and against each other.

Hypothesis draws component combinations (RoPE and its pairing, GQA, a head width of its
own, sliding windows per layer, q/k norm, GLU, RMSNorm or LayerNorm without bias,
bias-free linears, pre- or post-norm, causal or not) and holds both frameworks, on a
random backend, to the oracle in float64 with ragged padding and explicit positions.
Flash equals math through the model (outputs and the gradient of every parameter) with
windows, GQA and RoPE; bfloat16 stays within its row; the checkpoint writes format 3 only
when a format-3 field is used; bad positions and configs are refused by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_impl
import jax_impl.flash
import torch_impl
import torch_impl.flash
from parity_tests.helpers import (
    build_pair,
    jax_forward_backward,
    random_weights,
    run_jax,
    run_torch,
    to_numpy,
    torch_forward_backward,
)
from parity_tests.test_parity import compare_grads
from shared import reference
from shared import weights as v1
from shared.config import EncoderConfig
from shared.tolerances import assert_close, tolerance

B, T = 2, 9


def modern(**fields) -> EncoderConfig:
    """A tiny ModernBERT-like encoder (D=16, 4 heads, 3 layers), ``fields`` changed."""
    base = {
        "vocab_size": 40,
        "d_model": 16,
        "n_heads": 4,
        "d_ff": 24,
        "n_layers": 3,
        "max_len": 32,
        "dropout": 0.0,
        "positional": "rope",
        "norm_first": True,
        "embed_norm": True,
        "final_norm": True,
        "n_kv_heads": 2,
        "sliding_window": 2,
        "layer_types": ("full_attention", "sliding_attention", "sliding_attention"),
        "rope_theta": 1000.0,
        "rope_local_theta": 100.0,
        "gated_ffn": True,
        "activation": "gelu",
        "attention_bias": False,
        "mlp_bias": False,
        "mlp_out_bias": False,
        "norm_bias": False,
        "first_attn_norm": False,
    }
    return EncoderConfig(**(base | fields))


def inputs(cfg: EncoderConfig, seed: int, *, left: bool = False):
    """Ids, a ragged padding mask (right, or left), and positions counting real tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    mask = (np.arange(T)[None, :] < np.array([T, T - 4])[:, None]).astype(np.int64)
    if left:
        mask = mask[:, ::-1].copy()
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


@st.composite
def configs(draw):
    rope = draw(st.booleans())
    heads = draw(st.sampled_from([(4, 4), (4, 2), (4, 1)]))
    norm = draw(st.sampled_from(["layer_norm", "rms_norm"]))
    norm_first = draw(st.booleans())
    windowed = draw(st.booleans())
    kinds = tuple(
        draw(st.sampled_from(["full_attention", "sliding_attention"])) if windowed else "full_attention"
        for _ in range(2)
    )  # fmt: skip
    sliding = "sliding_attention" in kinds
    return EncoderConfig(
        vocab_size=40,
        d_model=16,
        n_heads=heads[0],
        n_kv_heads=heads[1],
        attn_head_dim=draw(st.sampled_from([0, 6])) if rope else 0,
        d_ff=20,
        n_layers=2,
        max_len=32,
        dropout=0.0,
        activation=draw(st.sampled_from(["gelu", "silu", "relu"])),
        norm_first=norm_first,
        positional="rope" if rope else "learned",
        causal=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        qk_norm=rope and draw(st.booleans()),
        sliding_window=draw(st.integers(1, 4)) if sliding else None,
        layer_types=kinds if windowed else None,
        rope_theta=draw(st.sampled_from([100.0, 10000.0])),
        rope_local_theta=draw(st.sampled_from([None, 50.0])) if rope and sliding else None,
        rope_interleaved=rope and draw(st.booleans()),
        gated_ffn=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        mlp_out_bias=draw(st.booleans()),
        norm=norm,
        norm_bias=norm == "layer_norm" and draw(st.booleans()),
        embed_norm=draw(st.booleans()),
        final_norm=norm_first,
        first_attn_norm=not norm_first or draw(st.booleans()),
    )


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
@given(cfg=configs(), backend=st.sampled_from(["math", "fused", "flash"]), seed=st.integers(0, 99))
def test_any_combination_of_parts_matches_the_oracle_in_float64(cfg, backend, seed):
    weights = random_weights(cfg, seed)
    ids, mask, positions = inputs(cfg, seed, left=cfg.causal)
    given_positions = positions if cfg.positional == "rope" else None
    want = reference.forward(weights, cfg, ids, mask, position_ids=given_positions)
    tm, jm = build_pair(cfg, weights, dtype="float64", backend=backend)
    kwargs = {"position_ids": given_positions, "return_hidden_states": True}
    real = mask.astype(bool)
    for name, (h, hidden) in (
        ("torch", run_torch(tm, ids, mask, **kwargs)),
        ("jax", run_jax(jm, ids, mask, dtype="float64", **kwargs)),
    ):
        # jax.nn.dot_product_attention runs its softmax in float32 whatever the dtype
        # (test_parity.py::test_jax_fused_kernel_computes_softmax_in_float32_even_for_float64)
        tol = tolerance("float32" if (name, backend) == ("jax", "fused") else "float64")
        assert_close(to_numpy(h)[real], want.last_hidden_state[real], tol, f"{name} {backend} h")
        for i, (a, b) in enumerate(zip(hidden, want.hidden_states, strict=True)):
            assert_close(to_numpy(a)[real], b[real], tol, f"{name} {backend} hidden {i}")


@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_match_the_oracle_with_windows_and_groups(causal):
    cfg = modern(causal=causal, qk_norm=True)
    weights = random_weights(cfg, 3)
    ids, mask, positions = inputs(cfg, 3, left=causal)
    want = reference.forward(weights, cfg, ids, mask, position_ids=positions)
    tm, jm = build_pair(cfg, weights, dtype="float64")
    kwargs = {"position_ids": positions, "return_attention": True}
    real = mask.astype(bool)
    for name, (_, attn) in (
        ("torch", run_torch(tm, ids, mask, **kwargs)),
        ("jax", run_jax(jm, ids, mask, dtype="float64", **kwargs)),
    ):
        for i, (a, b) in enumerate(zip(attn, want.attentions, strict=True)):
            a, b = np.swapaxes(to_numpy(a), 1, 2), np.swapaxes(b, 1, 2)  # (B, T, H, S)
            assert_close(a[real], b[real], tolerance("float64"), f"{name} attention {i}")
        local = to_numpy(attn[1])[0, :, T - 1]  # the last query of a sliding layer
        assert np.all(local[:, : T - 1 - cfg.sliding_window] == 0)  # keys outside the band


@pytest.fixture
def small_blocks(monkeypatch):
    for module in (torch_impl.flash, jax_impl.flash):
        monkeypatch.setattr(module, "BLOCK_Q", 2)
        monkeypatch.setattr(module, "BLOCK_K", 3)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_equals_math_through_the_model_outputs_and_every_gradient(causal, small_blocks):
    cfg = modern(causal=causal, qk_norm=True, n_kv_heads=1)
    weights = random_weights(cfg, 5)
    ids, mask, _ = inputs(cfg, 5)
    probe = np.random.default_rng(6).standard_normal((B, T, cfg.d_model))
    masks = {"key_padding_mask": mask.astype(bool), "is_causal": causal}
    tol = tolerance("float64")
    runs = {}
    for backend in ("math", "flash"):
        tm, jm = build_pair(cfg, weights, dtype="float64", backend=backend)
        runs[("torch", backend)] = torch_forward_backward(
            tm, ids, None, None, probe, attention=False, masks=masks
        )
        runs[("jax", backend)] = jax_forward_backward(
            jm, ids, None, None, probe, dtype="float64", attention=False, masks=masks
        )
    for framework in ("torch", "jax"):
        flash, math = runs[(framework, "flash")], runs[(framework, "math")]
        assert_close(flash["h"], math["h"], tol, f"{framework}: flash vs math output")
        assert "layers.0.ffn.gate.weight" in math["grads"]
        compare_grads(flash, math, tol, f"{framework}: flash vs math")
    compare_grads(runs[("jax", "flash")], runs[("torch", "flash")], tol, "jax vs torch flash")


def test_bfloat16_modern_encoder_stays_within_the_bfloat16_row():
    cfg = modern(norm="rms_norm", norm_bias=False, activation="silu", qk_norm=True)
    weights = random_weights(cfg, 8)
    ids, mask, positions = inputs(cfg, 8)
    want = reference.forward(weights, cfg, ids, mask, position_ids=positions)
    real = mask.astype(bool)
    for backend in ("math", "flash"):
        tm, jm = build_pair(cfg, weights, dtype="bfloat16", backend=backend)
        h_t = run_torch(tm, ids, mask, position_ids=positions)
        h_j = run_jax(jm, ids, mask, dtype="bfloat16", position_ids=positions)
        assert h_t.dtype == torch.bfloat16 and str(h_j.dtype) == "bfloat16"
        for name, h in (("torch", h_t), ("jax", h_j)):
            assert_close(
                to_numpy(h)[real], want.last_hidden_state[real], tolerance("bfloat16"), name
            )


def test_rope_positions_count_only_relative_to_each_other():
    """Scores depend on m - n only: shifting every position by 5 changes no output, so left
    padding (real tokens from position 4 by default) gives the same outputs with or without
    position_ids; a gap between two positions does change them."""
    cfg = modern(causal=True)
    weights = random_weights(cfg, 9)
    ids, mask, positions = inputs(cfg, 9, left=True)
    tm = torch_impl.from_weights(weights, cfg, dtype=torch.float64)
    real = mask.astype(bool)
    h = run_torch(tm, ids, mask, position_ids=positions).numpy()
    tol = tolerance("float64")
    shifted = run_torch(tm, ids, mask, position_ids=positions + 5).numpy()
    assert_close(shifted[real], h[real], tol, "positions + 5")
    default = run_torch(tm, ids, mask).numpy()
    assert_close(default[real], h[real], tol, "left padding, default positions")
    gap = positions + (np.arange(T) >= T - 2)  # the last two tokens one position further
    assert np.abs(run_torch(tm, ids, mask, position_ids=gap).numpy() - h)[:, -2:].max() > 1e-3


def test_checkpoint_writes_format_3_only_when_a_format_3_field_is_used(tmp_path):
    from safetensors import safe_open

    cfg = modern()
    tm = torch_impl.from_weights(random_weights(cfg, 1), cfg)
    torch_impl.save(tm, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "np") as fh:
        metadata = fh.metadata()
    assert metadata["format"] == "twin-encoder/3"
    assert json.loads(metadata["config"])["layer_types"] == list(cfg.layer_types)
    weights, back = v1.load_file(tmp_path / "m.safetensors")
    assert back == cfg and "layers.0.norm1.weight" not in weights
    jm = jax_impl.load(tmp_path / "m.safetensors")
    for name, array in jax_impl.export_weights(jm).items():
        np.testing.assert_array_equal(array, weights[name], err_msg=name)
    plain = EncoderConfig(causal=True)  # a format-2 field only: still format 2
    assert v1.format_of(plain) == v1.FORMAT_2 and v1.format_of(EncoderConfig()) == v1.FORMAT
    # a format-2 file whose config uses format-3 fields is refused, naming the format needed
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in weights.items()},
        str(tmp_path / "old.safetensors"),
        metadata={"format": "twin-encoder/2", "config": cfg.to_json()},
    )
    with pytest.raises(
        v1.CheckpointError, match=r"uses format-3 fields.*expected 'twin-encoder/3'"
    ):
        v1.load_file(tmp_path / "old.safetensors")


@pytest.mark.parametrize(
    ("position_ids", "message"),
    [
        (np.zeros((B, T + 1), np.int64), r"shape \(B, T\) = \(2, 9\) or \(1, 9\), got .*\(2, 10\)"),
        (np.zeros((B, T), np.float32), r"must be integer .* got dtype kind 'f'"),
        (np.full((B, T), -1), r"must lie in >= 0, got values in \[-1, -1\]"),
    ],
    ids=["shape", "dtype", "negative"],
)
def test_bad_position_ids_name_what_was_expected_and_got(position_ids, message):
    cfg = modern()
    tm, jm = build_pair(cfg, random_weights(cfg))
    ids, mask, _ = inputs(cfg, 0)
    for name, run in (("torch", run_torch), ("jax", run_jax)):
        model = tm if name == "torch" else jm
        with pytest.raises(ValueError, match=message):
            run(model, ids, mask, position_ids=position_ids)


def test_rope_positions_extend_past_max_len_and_only_their_differences_count():
    """RoPE is computed for any position, as transformers does, so the explicit positions
    and the default 0..T-1 agree on what is allowed; and a model whose only positions are
    rotary sees q.k at m - n alone: shifting every position by 100 (past max_len = 32)
    leaves the outputs unchanged (bounded by float32 rounding of the larger angles)."""
    cfg = modern()
    tm, jm = build_pair(cfg, random_weights(cfg))
    ids, mask, _ = inputs(cfg, 0)
    shifted = np.arange(T)[None, :] + 100
    for name, run in (("torch", run_torch), ("jax", run_jax)):
        model = tm if name == "torch" else jm
        positions = torch.as_tensor(shifted) if name == "torch" else shifted
        base = to_numpy(run(model, ids, mask))
        moved = to_numpy(run(model, ids, mask, position_ids=positions))
        real = mask.astype(bool)
        assert_close(moved[real], base[real], tolerance("float32"), f"{name}: positions + 100")


def test_a_vit_refuses_position_ids():
    cfg = EncoderConfig(
        d_model=16, n_heads=4, d_ff=24, n_layers=1, image_size=8, patch_size=4, max_len=5,
        positional="learned", norm_first=True, final_norm=True,
    )  # fmt: skip
    tm = torch_impl.from_weights(random_weights(cfg), cfg)
    pixels = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="position_ids are for text models"):
        tm(pixel_values=torch.from_numpy(pixels), position_ids=torch.zeros(1, 5, dtype=torch.long))
