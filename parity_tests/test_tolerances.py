"""The tolerance table and assert_close on hand-computed cases."""

import numpy as np
import pytest

from shared.tolerances import Tolerance, assert_close, tolerance


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
