"""The EncoderConfig fields that checkpoint families need (format 2): causal by config,
RoBERTa's padding-aware positions, ELECTRA's narrower embeddings with a projection. Both
implementations against the float64 oracle, with padding; each field round-trips through
JSON and a checkpoint, and bad values are refused saying why."""

from __future__ import annotations

import numpy as np
import pytest

import jax_impl
import torch_impl
from parity_tests.helpers import (
    build_pair,
    make_inputs,
    random_weights,
    run_jax,
    run_torch,
    to_numpy,
)
from shared import EncoderConfig, reference
from shared import weights as v1
from shared.tolerances import assert_close, tolerance

BASE = dict(vocab_size=40, d_model=16, n_heads=2, d_ff=24, n_layers=2, dropout=0.0, max_len=12)
CASES = {
    "causal_pre_norm": dict(causal=True, norm_first=True, final_norm=True, positional="learned"),
    "roberta_positions": dict(
        position_pad_id=1, positional="learned", type_vocab_size=1, embed_norm=True
    ),
    "electra_projection": dict(
        embed_dim=8, positional="learned", type_vocab_size=2, embed_norm=True
    ),
    "electra_sinusoidal": dict(embed_dim=8),
}


def _inputs(cfg: EncoderConfig):
    ids, mask, types = make_inputs(cfg, 3, 9, seed=3, pad="some")
    if cfg.position_pad_id is not None:  # pads carry the pad id, as a tokenizer writes them
        ids = np.where(mask == 1, np.maximum(ids, cfg.position_pad_id + 1), cfg.position_pad_id)
    return ids, mask, types


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_new_fields_match_the_oracle_at_real_positions(case, backend):
    cfg = EncoderConfig(**BASE, **CASES[case])
    weights = random_weights(cfg, seed=1)
    ids, mask, types = _inputs(cfg)
    want = reference.forward(weights, cfg, ids, mask, types)
    tm, jm = build_pair(cfg, weights, backend=backend)
    real = mask.astype(bool)
    tol = tolerance("float32")
    for name, run in (("torch", run_torch), ("jax", run_jax)):
        h, attn, hidden = run(
            tm if name == "torch" else jm,
            ids,
            mask,
            types,
            return_attention=True,
            return_hidden_states=True,
        )
        assert_close(to_numpy(h)[real], want.last_hidden_state[real], tol, f"{name} {case} h")
        for i, (a, b) in enumerate(zip(hidden, want.hidden_states, strict=True)):
            assert_close(to_numpy(a)[real], b[real], tol, f"{name} {case} hidden {i}")
        for i, (a, b) in enumerate(zip(attn, want.attentions, strict=True)):
            a, b = np.swapaxes(to_numpy(a), 1, 2), np.swapaxes(b, 1, 2)  # (B, T, H, S)
            assert_close(a[real], b[real], tol, f"{name} {case} attention {i}")


def test_causal_config_equals_is_causal_at_call_time():
    cfg = EncoderConfig(**BASE, causal=True)
    weights = random_weights(cfg, seed=2)
    ids, mask, _ = _inputs(cfg)
    plain = cfg.replace(causal=False)
    tm, jm = build_pair(cfg, weights)
    tm0, jm0 = build_pair(plain, weights)
    np.testing.assert_array_equal(
        to_numpy(run_torch(tm, ids, mask)), to_numpy(run_torch(tm0, ids, mask, is_causal=True))
    )
    np.testing.assert_array_equal(
        to_numpy(run_jax(jm, ids, mask)), to_numpy(run_jax(jm0, ids, mask, is_causal=True))
    )
    # and it is not the same function as the bidirectional model
    assert not np.allclose(to_numpy(run_torch(tm, ids)), to_numpy(run_torch(tm0, ids)))


def test_roberta_positions_skip_pads_and_start_after_the_pad_id():
    cfg = EncoderConfig(**BASE, **CASES["roberta_positions"])
    ids = np.array([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])  # right and left padding
    expected = np.array([[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]])  # transformers' rule, by hand
    tm, jm = build_pair(cfg, random_weights(cfg))
    np.testing.assert_array_equal(
        to_numpy(tm.embeddings.position_ids(__import__("torch").as_tensor(ids))), expected
    )
    np.testing.assert_array_equal(np.asarray(jm.embeddings.position_ids(ids)), expected)


def test_format2_checkpoint_round_trips_and_format1_stays_format1(tmp_path):
    from safetensors import safe_open

    for case, fields in CASES.items():
        cfg = EncoderConfig(**BASE, **fields)
        assert EncoderConfig.from_json(cfg.to_json()) == cfg
        weights = random_weights(cfg)
        path = tmp_path / f"{case}.safetensors"
        v1.save_file(path, weights, cfg)
        with safe_open(str(path), framework="numpy") as fh:
            assert fh.metadata()["format"] == "twin-encoder/2"
        _, cfg2 = v1.load_file(path)
        assert cfg2 == cfg
        jm = jax_impl.load(path)
        tm = torch_impl.load(path)
        ids, mask, types = _inputs(cfg)
        assert_close(
            to_numpy(run_jax(jm, ids, mask, types)),
            to_numpy(run_torch(tm, ids, mask, types)),
            tolerance("float32"),
            case,
        )
    plain = EncoderConfig(**BASE)
    v1.save_file(tmp_path / "plain.safetensors", random_weights(plain), plain)
    with safe_open(str(tmp_path / "plain.safetensors"), framework="numpy") as fh:
        assert fh.metadata()["format"] == "twin-encoder/1"
        assert "causal" not in fh.metadata()["config"]  # older readers reject unknown fields


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(position_pad_id=1), "position_pad_id=1 needs positional='learned'"),
        (dict(position_pad_id=11, positional="learned"), "needs max_len >= position_pad_id \\+ 2"),
        (dict(position_pad_id=-1, positional="learned"), "position_pad_id=-1 must be >= 0"),
        (dict(embed_dim=16), "embed_dim=16 equals d_model: use embed_dim=0"),
        (dict(embed_dim=-2), "embed_dim=-2 must be >= 0"),
        (dict(causal=1), "causal=1 must be a bool"),
    ],
)
def test_bad_new_field_values_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**BASE, **fields)


VIT = dict(
    vocab_size=1,
    d_model=16,
    n_heads=2,
    d_ff=24,
    n_layers=2,
    dropout=0.0,
    image_size=8,
    patch_size=4,
    num_channels=3,
    max_len=5,
    positional="learned",
    norm_first=True,
    final_norm=True,
)


@pytest.mark.parametrize("backend", ["math", "fused"])
def test_vit_patches_match_the_oracle(backend):
    cfg = EncoderConfig(**VIT)
    weights = random_weights(cfg, seed=4)
    pixels = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = reference.forward(weights, cfg, None, pixel_values=pixels)
    tm, jm = build_pair(cfg, weights, backend=backend)
    tol = tolerance("float32")
    for name, model, run in (("torch", tm, run_torch), ("jax", jm, run_jax)):
        h, attn = run(model, None, pixel_values=pixels, return_attention=True)
        assert to_numpy(h).shape == (2, 5, 16)  # class token + 4 patches
        assert_close(to_numpy(h), want.last_hidden_state, tol, f"{name} vit h")
        for i, (a, b) in enumerate(zip(attn, want.attentions, strict=True)):
            assert_close(to_numpy(a), b, tol, f"{name} vit attention {i}")


def test_patch_order_is_row_major_over_the_grid():
    """Patch 1 is the top-right P x P block: changing only those pixels changes only it."""
    cfg = EncoderConfig(**VIT)
    weights = random_weights(cfg, seed=6)
    pixels = np.zeros((1, 3, 8, 8), np.float32)
    base = reference.forward(weights, cfg, None, pixel_values=pixels).hidden_states[0]
    pixels[0, :, 0:4, 4:8] = 1.0
    moved = reference.forward(weights, cfg, None, pixel_values=pixels).hidden_states[0]
    changed = np.abs(moved - base).max(axis=-1)[0]  # per token: class, p0, p1, p2, p3
    assert changed[2] > 0 and np.all(changed[[0, 1, 3, 4]] == 0)
    tm, jm = build_pair(cfg, weights)
    for run, model in ((run_torch, tm), (run_jax, jm)):
        _, hidden = run(model, None, pixel_values=pixels, return_hidden_states=True)
        assert_close(to_numpy(hidden[0]), moved, tolerance("float32"), "patch embeddings")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            dict(pixel_values=np.zeros((2, 3, 8, 4), np.float32)),
            r"pixel_values must have shape \(batch, 3, 8, 8\), got \(2, 3, 8, 4\)",
        ),
        (
            dict(pixel_values=np.zeros((2, 1, 8, 8), np.float32)),
            r"shape \(batch, 3, 8, 8\), got \(2, 1, 8, 8\)",
        ),
        (
            dict(input_ids=np.zeros((2, 5), np.int64)),
            r"input_ids given to a ViT \(image_size=8\); expected only pixel_values",
        ),
        (dict(), r"a ViT needs pixel_values \(batch, 3, 8, 8\), got None"),
    ],
    ids=["wrong_size", "wrong_channels", "input_ids", "nothing"],
)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_vit_bad_input_is_refused_naming_expected_and_got(framework, call, message):
    cfg = EncoderConfig(**VIT)
    tm, jm = build_pair(cfg, random_weights(cfg))
    model = tm if framework == "torch" else jm
    call = dict(call)  # the parameter is shared between the frameworks
    ids = call.pop("input_ids", None)
    with pytest.raises(ValueError, match=message):
        model(ids, **call)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_pixel_values_given_to_a_text_model_is_refused(framework):
    cfg = EncoderConfig(**BASE)
    tm, jm = build_pair(cfg, random_weights(cfg))
    model = tm if framework == "torch" else jm
    with pytest.raises(ValueError, match=r"pixel_values given to a text model \(image_size=0\)"):
        model(pixel_values=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"input_ids \(batch, seq_len\) is required"):
        model()


def test_bad_vit_config_is_refused():
    with pytest.raises(ValueError, match="image_size=8 is not divisible by patch_size=3"):
        EncoderConfig(**(VIT | dict(patch_size=3)))
    with pytest.raises(ValueError, match=r"max_len=6 must be n_patches \+ 1 = 5"):
        EncoderConfig(**(VIT | dict(max_len=6)))
    with pytest.raises(ValueError, match="type_vocab_size=2 with image_size=8: a ViT needs"):
        EncoderConfig(**(VIT | dict(type_vocab_size=2)))
