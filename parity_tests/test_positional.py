"""The sinusoidal positional table against the paper's formula, computed by hand."""

import math

import numpy as np

from shared.positional import sinusoidal


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
