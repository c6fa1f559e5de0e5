"""``shared.divergence``: per-layer differences, and finding the first layer that parts ways."""

from __future__ import annotations

import numpy as np
import pytest

import jax_impl
import torch_impl
from parity_tests.helpers import make_inputs, random_weights, run_jax, run_torch, to_numpy
from shared import EncoderConfig
from shared.divergence import compare_layers, first_divergence, format_table
from shared.tolerances import tolerance


def test_compare_layers_measures_each_layer_against_its_scale():
    expected = [np.ones((2, 3)), 2 * np.ones((2, 3)), 4 * np.ones((2, 3))]
    actual = [a.copy() for a in expected]
    actual[1][1, 2] += 1e-3  # layer 1: off by 1e-3 at (1, 2), scale 2
    actual[2][0, 0] -= 4e-2  # layer 2: off by 4e-2 at (0, 0), scale 4
    diffs = compare_layers(actual, expected, name="h")
    assert [d.name for d in diffs] == ["h[0]", "h[1]", "h[2]"]
    assert diffs[0].max_abs == 0.0 and diffs[0].max_rel == 0.0
    assert diffs[1].worst_index == (1, 2) and diffs[1].scale == 2.0
    assert diffs[1].max_abs == pytest.approx(1e-3, rel=1e-9)
    assert diffs[1].max_rel == pytest.approx(5e-4, rel=1e-9)
    assert diffs[2].max_rel == pytest.approx(1e-2, rel=1e-9)
    # The first layer beyond float32's bound (1e-5 + 1e-5 * scale) is layer 1, not layer 2.
    assert first_divergence(diffs, tolerance("float32")).name == "h[1]"
    assert first_divergence(diffs[:1], tolerance("float32")) is None


def test_where_leaves_padding_out_and_nan_is_the_worst_difference():
    expected = [np.zeros((1, 4))]
    actual = [np.array([[0.0, 0.0, 5.0, np.nan]])]
    real = np.array([[True, True, False, False]])  # the last two positions are padding
    assert compare_layers(actual, expected, name="h", where=real)[0].max_abs == 0.0
    everything = compare_layers(actual, expected, name="h")[0]
    assert everything.max_abs == np.inf and everything.worst_index == (0, 3)


def test_compare_layers_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 layers vs 1 layers"):
        compare_layers([np.zeros(2)] * 2, [np.zeros(2)], name="h")
    with pytest.raises(ValueError, match=r"h\[0\]: shapes differ"):
        compare_layers([np.zeros(2)], [np.zeros(3)], name="h")


CFG = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=3, max_len=16)


def _per_layer(weights_torch, weights_jax, ids, mask):
    tm = torch_impl.from_weights(weights_torch, CFG)
    jm = jax_impl.from_weights(weights_jax, CFG)
    _, attn_t, hidden_t = run_torch(tm, ids, mask, return_attention=True, return_hidden_states=True)
    _, attn_j, hidden_j = run_jax(jm, ids, mask, return_attention=True, return_hidden_states=True)
    real = mask.astype(bool)
    hidden = compare_layers(
        [to_numpy(h) for h in hidden_j],
        [to_numpy(h) for h in hidden_t],
        name="hidden_states",
        where=real[:, :, None],
    )
    attention = compare_layers(
        [to_numpy(a) for a in attn_j],
        [to_numpy(a) for a in attn_t],
        name="attention",
        where=real[:, None, :, None],
    )
    return hidden, attention


def test_the_two_frameworks_agree_at_every_layer():
    weights = random_weights(CFG, seed=3)
    ids, mask, _ = make_inputs(CFG, 3, 10, seed=3, pad="some")
    hidden, attention = _per_layer(weights, weights, ids, mask)
    tol = tolerance("float32")
    assert first_divergence([*hidden, *attention], tol) is None
    table = format_table(hidden, attention)
    assert table.splitlines()[1].lstrip().startswith("embedding")
    assert "layer 3" in table


def test_a_bug_in_one_layer_is_found_at_that_layer():
    weights = random_weights(CFG, seed=4)
    broken = dict(weights)
    # A classic conversion bug, in layer 1 only: the key projection transposed.
    broken["layers.1.attention.k.weight"] = weights["layers.1.attention.k.weight"].T.copy()
    ids, mask, _ = make_inputs(CFG, 3, 10, seed=4, pad="some")
    hidden, attention = _per_layer(weights, broken, ids, mask)
    tol = tolerance("float32")
    # hidden_states[i + 1] is layer i's output: layers 0 agree, layer 1 is where they part.
    assert first_divergence(hidden, tol).name == "hidden_states[2]"
    assert first_divergence(attention, tol).name == "attention[1]"
