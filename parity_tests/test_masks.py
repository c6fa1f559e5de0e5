"""The one mask convention (True = may attend) and its converters, checked on hand-written
cases, and each framework's mask builder held equal to the NumPy definition."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
import torch_impl
from shared import masks


def test_padding_mask_masks_keys_only():
    m = masks.padding(np.array([[1, 1, 0]]))
    assert m.shape == (1, 1, 1, 3)
    assert m.tolist() == [[[[True, True, False]]]]


def test_causal_mask_is_lower_triangular():
    expected = [[True, False, False], [True, True, False], [True, True, True]]
    assert masks.causal(3)[0, 0].tolist() == expected
    assert masks.causal(2, 3)[0, 0].tolist() == [[True, False, False], [True, True, False]]


def test_padding_and_causal_combine_with_logical_and():
    m = masks.make_attention_mask(np.array([[1, 1, 0], [1, 0, 0]]), is_causal=True, q_len=3)
    assert m.shape == (2, 1, 3, 3)
    assert m[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert m[1, 0].tolist() == [[True, False, False]] * 3
    assert masks.make_attention_mask(None, is_causal=False, q_len=3) is None


def test_key_padding_mask_has_pytorchs_inverted_polarity():
    real = np.array([[1, 1, 0]])
    kpm = masks.to_key_padding_mask(real)
    assert kpm.tolist() == [[False, False, True]]  # True = ignore, as nn.MultiheadAttention
    assert masks.from_key_padding_mask(kpm).tolist() == [[True, True, False]]


def test_additive_mask_is_zero_where_allowed_and_minus_inf_elsewhere():
    add = masks.to_additive(np.array([True, False]))
    assert add.dtype == np.float32
    assert add[0] == 0.0 and add[1] == -np.inf
    assert masks.from_additive(add).tolist() == [True, False]
    finite = np.array([0.0, np.finfo(np.float32).min], dtype=np.float32)
    assert masks.from_additive(finite).tolist() == [True, False]


def test_an_additive_bias_is_not_a_mask():
    with pytest.raises(ValueError, match="bias, not a mask"):
        masks.from_additive(np.array([0.0, -1.5], dtype=np.float32))
    with pytest.raises(ValueError, match="floating point"):
        masks.from_additive(np.array([0, 1]))


def test_pytorchs_additive_mask_gives_the_same_attention_as_our_boolean_mask():
    """The converter is the bridge to PyTorch's float masks: same softmax either way."""
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.standard_normal((2, 3, 4)))
    allowed = rng.random((2, 3, 4)) < 0.7
    allowed[..., 0] = True  # every row keeps a key, so -inf cannot produce NaN
    additive = torch.tensor(masks.to_additive(allowed, np.float64))
    ours = torch.softmax(scores.masked_fill(~torch.tensor(allowed), float("-inf")), -1)
    theirs = torch.softmax(scores + additive, -1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("with_padding", [False, True])
def test_each_framework_builds_the_numpy_mask(is_causal, with_padding):
    rng = np.random.default_rng(1)
    real = (rng.random((3, 5)) < 0.7).astype(np.int64) if with_padding else None
    expected = masks.make_attention_mask(real, is_causal=is_causal, q_len=5)
    got_t = torch_impl.make_attention_mask(
        None if real is None else torch.tensor(real), is_causal=is_causal, q_len=5
    )
    got_j = jax_impl.make_attention_mask(
        None if real is None else jnp.asarray(real), is_causal=is_causal, q_len=5
    )
    if expected is None:
        assert got_t is None and got_j is None
        return
    assert got_t.dtype == torch.bool and got_j.dtype == jnp.bool_
    np.testing.assert_array_equal(got_t.numpy(), expected)
    np.testing.assert_array_equal(np.asarray(got_j), expected)
