"""The parts of encoders from 2021 on, one by one: the config fields that choose them, and
the float64 NumPy definitions (``shared/positional.py``, ``shared/masks.py``,
``shared/reference.py``) that both implementations are tested against.

Each definition is checked against an independent statement of it: RoPE against complex
multiplication and the relative-position property, the band mask against its key count,
RMSNorm against a hand-computed value, grouped K/V heads against full multi-head attention
with each K/V head copied to its query heads.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from shared import masks, reference
from shared.config import SECTIONS, EncoderConfig
from shared.positional import apply_rope, rope_inverse_frequencies

MODERN = {
    "d_model": 32,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_ff": 48,
    "n_layers": 3,
    "positional": "rope",
    "rope_theta": 160000.0,
    "rope_local_theta": 10000.0,
    "sliding_window": 2,
    "layer_types": ("full_attention", "sliding_attention", "sliding_attention"),
    "gated_ffn": True,
    "activation": "silu",
    "norm": "rms_norm",
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "mlp_out_bias": False,
    "norm_first": True,
    "final_norm": True,
}


# --- the config ------------------------------------------------------------------------------


def test_every_field_is_in_one_section_and_print_shows_them():
    names = [f.name for f in dataclasses.fields(EncoderConfig)]
    listed = [n for section in SECTIONS.values() for n in section]
    assert sorted(listed) == sorted(names) and len(set(listed)) == len(listed)
    cfg = EncoderConfig(**MODERN)
    text = str(cfg)
    for section, fields in SECTIONS.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(section + ":"))
        for name in fields:
            assert f"{name}={getattr(cfg, name)!r}" in line


def test_modern_config_round_trips_through_json_and_reads_per_layer():
    cfg = EncoderConfig(**MODERN)
    again = EncoderConfig.from_json(cfg.to_json())
    assert again == cfg and isinstance(again.layer_types, tuple)
    assert cfg.kv_heads == 2 and cfg.head_dim == 8
    assert [cfg.layer_window(i) for i in range(3)] == [None, 2, 2]
    assert [cfg.layer_rope_theta(i) for i in range(3)] == [160000.0, 10000.0, 10000.0]
    # a window without a pattern: every layer is local
    assert EncoderConfig(sliding_window=3).layer_kinds == ("sliding_attention",) * 2
    # Qwen3: the head width is its own field
    qwen = EncoderConfig(d_model=24, n_heads=4, attn_head_dim=8, positional="rope")
    assert qwen.head_dim == 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_kv_heads": 3}, "n_kv_heads=3 must divide n_heads=4"),
        ({"attn_head_dim": 5}, "head_dim must be even, got head_dim=5"),
        ({"sliding_window": 0}, "sliding_window=0 must be >= 1"),
        ({"sliding_window": -4}, "sliding_window=-4 must be >= 1"),
        ({"layer_types": ("full_attention",)}, "1 entries, expected one per layer: n_layers=3"),
        ({"layer_types": ("full", "full", "full")}, "'full'; expected one of"),
        ({"sliding_window": None}, "sliding_window is None; expected a window >= 1"),
        ({"norm_bias": True}, "expected norm_bias=False, got True"),
        ({"norm": "batch_norm"}, "norm='batch_norm' must be one of"),
        ({"rope_theta": 1.0}, "rope_theta=1.0 must be > 1"),
        ({"positional": "learned"}, "need positional='rope', got positional='learned'"),
        ({"norm_first": False, "first_attn_norm": False}, "first_attn_norm=False needs"),
        ({"gated_ffn": 1}, "gated_ffn=1 must be a bool"),
    ],
)
def test_bad_modern_fields_name_what_was_expected_and_got(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EncoderConfig(**(MODERN | changes))


# --- RoPE --------------------------------------------------------------------------------------


def test_rope_frequencies_are_base_to_the_minus_2i_over_d():
    inv = rope_inverse_frequencies(8, 10000.0)
    np.testing.assert_allclose(inv, [1.0, 10000.0**-0.25, 10000.0**-0.5, 10000.0**-0.75])
    with pytest.raises(ValueError, match="head_dim must be even, got 7"):
        rope_inverse_frequencies(7, 10000.0)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_is_a_complex_rotation_of_each_pair(interleaved):
    """Pair p of features, read as the complex number a + ib, is multiplied by e^(i m theta_p)."""
    rng = np.random.default_rng(0)
    hd, base = 8, 500.0
    x = rng.standard_normal((2, 3, 5, hd))
    positions = rng.integers(0, 40, size=(2, 5))
    got = apply_rope(x, positions, base, interleaved=interleaved)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
    theta = base ** (-np.arange(hd // 2) * 2.0 / hd)
    z = (a + 1j * b) * np.exp(1j * positions[:, None, :, None] * theta)
    if interleaved:
        expected = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    else:
        expected = np.concatenate([z.real, z.imag], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_scores_depend_only_on_the_relative_position(interleaved):
    """q_m . k_n after rotation is a function of m - n: shifting both positions by c keeps it,
    and changing m - n changes it."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 1, 1, 16))

    def score(m, n):
        qm = apply_rope(q, np.array([[m]]), 10000.0, interleaved=interleaved)
        kn = apply_rope(k, np.array([[n]]), 10000.0, interleaved=interleaved)
        return float((qm * kn).sum())

    for m, n in ((0, 0), (3, 7), (11, 2), (50, 49)):
        for shift in (1, 5, 100, 1000):
            assert math.isclose(score(m, n), score(m + shift, n + shift), abs_tol=1e-9)
    assert abs(score(3, 7) - score(3, 8)) > 1e-3  # and it does depend on m - n


# --- norms, masks, grouped K/V heads -----------------------------------------------------------


def test_rms_norm_by_hand():
    x = np.array([[3.0, 4.0]])  # mean of squares 12.5
    got = reference.rms_norm(x, np.array([1.0, 2.0]), eps=0.0)
    np.testing.assert_allclose(got, [[3.0 / math.sqrt(12.5), 8.0 / math.sqrt(12.5)]])
    # LayerNorm without bias is LayerNorm with a zero bias
    cfg = EncoderConfig(norm_bias=False)
    w = {"n.weight": np.array([1.5, 0.5])}
    np.testing.assert_allclose(
        reference.norm(w, "n", x, cfg), reference.layer_norm(x, w["n.weight"], 0.0, 1e-5)
    )


def test_band_keeps_two_window_plus_one_keys_inclusive():
    band = masks.band(300, window=64)[0, 0]
    assert band[150].sum() == 129  # ModernBERT's local_attention = 128: 2 * 64 + 1 keys
    assert band[0].sum() == 65 and band[150, 150 - 64] and not band[150, 150 - 65]
    causal_band = masks.make_attention_mask(None, is_causal=True, q_len=10, window=3)[0, 0]
    assert causal_band[5].tolist() == [False, False, True, True, True, True] + [False] * 4
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="window must be an int >= 1"):
            masks.band(4, window=bad)


def test_grouped_kv_heads_equal_full_heads_with_copied_kv_weights():
    """G K/V heads serving H / G query heads each, in order, is full multi-head attention
    whose K/V weights hold each K/V head's columns repeated for its query heads."""
    rng = np.random.default_rng(2)
    b, t, d, h, g, hd = 2, 5, 16, 4, 2, 4
    w = {
        "q.weight": rng.standard_normal((d, h * hd)),
        "k.weight": rng.standard_normal((d, g * hd)),
        "v.weight": rng.standard_normal((d, g * hd)),
        "out.weight": rng.standard_normal((h * hd, d)),
    }
    x = rng.standard_normal((b, t, d))
    out, weights = reference.multi_head_attention(w, x, None, h, None, n_kv_heads=g)

    def repeat_heads(a):  # (D, G * hd) -> (D, H * hd): kv head j for query heads j*2, j*2+1
        return np.concatenate([a[:, (qh // (h // g)) * hd :][:, :hd] for qh in range(h)], axis=1)

    full = w | {"k.weight": repeat_heads(w["k.weight"]), "v.weight": repeat_heads(w["v.weight"])}
    expected, expected_weights = reference.multi_head_attention(full, x, None, h, None)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12, atol=1e-12)


def test_the_modernbert_base_preset_is_what_transformers_builds_from_its_defaults():
    """transformers' ModernBertConfig defaults are ModernBERT-base: read through the family."""
    transformers = pytest.importorskip("transformers")
    from shared.config import MODERNBERT_BASE
    from shared.hf import modernbert

    data = transformers.ModernBertConfig().to_dict()
    assert modernbert.FAMILY.config(data) == MODERNBERT_BASE
