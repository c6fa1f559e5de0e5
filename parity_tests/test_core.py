"""EncoderConfig, the sinusoidal table and the tolerance helpers, on hand-computed cases."""

import dataclasses
import json
import math

import numpy as np
import pytest

from shared import EncoderConfig
from shared.positional import sinusoidal
from shared.tolerances import Tolerance, assert_close, tolerance


def test_config_round_trips_through_json_and_dict():
    cfg = EncoderConfig(
        vocab_size=7,
        d_model=12,
        n_heads=3,
        activation="relu",
        positional="learned",
        type_vocab_size=2,
        embed_norm=True,
        norm_first=True,
        final_norm=True,
    )
    assert EncoderConfig.from_json(cfg.to_json()) == cfg
    assert EncoderConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.head_dim == 4


def test_config_is_frozen_and_replace_validates_again():
    cfg = EncoderConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]
    assert cfg.replace(n_layers=3).n_layers == 3
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        cfg.replace(d_model=30)


def test_sinusoidal_table_matches_the_papers_formula_by_hand():
    table = sinusoidal(3, 4)
    # pos 0: sin(0), cos(0) in every pair
    np.testing.assert_array_equal(table[0], [0.0, 1.0, 0.0, 1.0])
    # pos 2, pair i=1: angle 2 / 10000^(2/4) = 2 / 100; sines on even columns, cosines on odd
    expected = [math.sin(2.0), math.cos(2.0), math.sin(0.02), math.cos(0.02)]
    np.testing.assert_allclose(table[2], expected, rtol=0, atol=1e-15)


def test_sinusoidal_table_is_interleaved_not_concatenated():
    """The paper interleaves sin/cos (PE(pos, 2i), PE(pos, 2i+1)); Flax examples concatenate
    [sin | cos] halves, which would put sin(pos / 10000^(2/8)) in column 1 instead."""
    pos = np.arange(50.0)
    table = sinusoidal(50, 8)
    np.testing.assert_allclose(table[:, 0], np.sin(pos), atol=1e-15)
    np.testing.assert_allclose(table[:, 1], np.cos(pos), atol=1e-15)


def test_sinusoidal_table_with_an_odd_width():
    table = sinusoidal(4, 5)
    assert table.shape == (4, 5)
    np.testing.assert_allclose(table[1, 4], math.sin(1 / 10000 ** (4 / 5)), atol=1e-15)


def test_assert_close_measures_against_the_tensor_scale():
    tol = Tolerance(atol=0.0, rtol=1e-3)
    assert_close(np.array([1000.0, 0.0]), np.array([1000.5, 0.4]), tol)  # bound 1.0005
    with pytest.raises(AssertionError, match=r"max abs diff 2 at \(0,\)"):
        assert_close(np.array([1002.0, 0.0]), np.array([1000.0, 0.0]), tol)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(np.array([np.nan]), np.array([0.0]), tol)


def test_tolerance_table_has_no_row_for_unknown_dtypes():
    assert tolerance("float32", "cpu").atol == 1e-5
    with pytest.raises(ValueError, match="no tolerance for dtype='float16'"):
        tolerance("float16", "cpu")
