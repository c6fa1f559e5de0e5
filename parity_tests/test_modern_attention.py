"""Attention with grouped K/V heads, sliding windows and rotary positions, function by
function, on every backend of both frameworks.

Flash equals math (outputs and the gradients with respect to q, k and v) for any lengths,
block sizes, group sizes, windows and masks (hypothesis, float64, against the NumPy oracle
with K/V repeated per group and the band mask built in ``shared.masks``); fused equals
math in float32; bfloat16 flash stays within the bfloat16 row. The flash loops visit
exactly the blocks that hold an allowed (query, key) pair, counted against a brute-force
enumeration, so that a windowed layer's cost grows linearly in T. Both frameworks' RoPE
equals ``shared.positional.apply_rope``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_impl
import jax_impl.flash
import torch_impl
import torch_impl.flash
from parity_tests.helpers import jax_dtype_scope
from shared import masks, reference
from shared.positional import apply_rope, rope_inverse_frequencies
from shared.tolerances import assert_close, tolerance


def dense_mask(mask, padding, is_causal, window, t):
    """The oracle's (B|1, H|1, T, T) mask from the NumPy definitions."""
    full = masks.make_attention_mask(padding, is_causal=is_causal, q_len=t, window=window)
    full = np.ones((1, 1, t, t), dtype=bool) if full is None else full
    return full if mask is None else full & mask


def oracle(q, k, v, full):
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    return reference.scaled_dot_product_attention(q, k, v, full)[0]


def torch_run(fn, q, k, v, d_out, mask, padding, **options):
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    m = None if mask is None else torch.from_numpy(mask)
    p = None if padding is None else torch.from_numpy(padding)
    out = fn(*qkv, m, key_padding_mask=p, **options)
    grads = torch.autograd.grad(out, qkv, torch.from_numpy(d_out))
    return out.detach().numpy(), [g.numpy() for g in grads]


def jax_run(fn, q, k, v, d_out, mask, padding, **options):
    def f(q, k, v):
        return fn(q, k, v, mask, key_padding_mask=padding, **options)

    out, vjp = jax.vjp(f, *(jnp.asarray(a) for a in (q, k, v)))
    return np.asarray(out), [np.asarray(g) for g in vjp(jnp.asarray(d_out))]


def inputs(rng, b, h, g, t, hd, mask_kind, dtype=np.float64):
    q, d_out = (rng.standard_normal((b, h, t, hd)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((b, g, t, hd)).astype(dtype) for _ in range(2))
    mask = rng.random((b, h, t, t)) < 0.6 if mask_kind in ("custom", "all") else None
    padding = rng.random((b, t)) < 0.75 if mask_kind in ("padding", "all") else None
    return q, k, v, d_out, mask, padding


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(1, 13),
    heads=st.sampled_from([(2, 2), (4, 2), (4, 1), (6, 3)]),
    window=st.one_of(st.none(), st.integers(1, 6)),
    is_causal=st.booleans(),
    mask_kind=st.sampled_from(["none", "padding", "custom", "all"]),
    block_q=st.integers(1, 5),
    block_k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_flash_and_math_equal_the_oracle_with_groups_and_windows_float64(
    t, heads, window, is_causal, mask_kind, block_q, block_k, seed
):
    """Outputs against the oracle; flash's gradients against autograd through math."""
    rng = np.random.default_rng(seed)
    h, g = heads
    q, k, v, d_out, mask, padding = inputs(rng, 2, h, g, t, 4, mask_kind)
    expected = oracle(q, k, v, dense_mask(mask, padding, is_causal, window, t))
    tol = tolerance("float64")
    geometry = {"is_causal": is_causal, "window": window}
    blocks = {"block_q": block_q, "block_k": block_k}
    math_t, grads_t = torch_run(
        torch_impl.attention.math_attention, q, k, v, d_out, mask, padding, **geometry
    )
    runs = {
        "torch flash": torch_run(
            torch_impl.flash_attention, q, k, v, d_out, mask, padding, **geometry, **blocks
        )
    }
    with jax_dtype_scope("float64"):
        runs["jax math"] = jax_run(
            jax_impl.attention.math_attention, q, k, v, d_out, mask, padding, **geometry
        )
        runs["jax flash"] = jax_run(
            jax_impl.flash_attention, q, k, v, d_out, mask, padding, **geometry, **blocks
        )
    assert_close(math_t, expected, tol, "torch math output")
    for name, (out, grads) in runs.items():
        assert_close(out, expected, tol, f"{name} output")
        for got, want, wrt in zip(grads, grads_t, "qkv", strict=True):
            assert_close(got, want, tol, f"{name} d/d{wrt}")


@pytest.mark.parametrize(("h", "g", "window", "is_causal"), [(4, 2, 2, False), (4, 1, 3, True)])
def test_fused_equals_math_with_groups_and_windows_float32(h, g, window, is_causal):
    """The fused kernels take the K/V groups natively and the window as a mask."""
    rng = np.random.default_rng(3)
    q, k, v, d_out, mask, padding = inputs(rng, 2, h, g, 9, 8, "padding", np.float32)
    tol = tolerance("float32")
    geometry = {"is_causal": is_causal, "window": window}
    math_t = torch_run(
        torch_impl.attention.math_attention, q, k, v, d_out, mask, padding, **geometry
    )
    fused_t = torch_run(torch_impl.fused_attention, q, k, v, d_out, mask, padding, **geometry)
    with jax_dtype_scope("float32"):
        math_j = jax_run(
            jax_impl.attention.math_attention, q, k, v, d_out, mask, padding, **geometry
        )
        fused_j = jax_run(jax_impl.fused_attention, q, k, v, d_out, mask, padding, **geometry)
    for name, (out, grads), (want, want_grads) in (
        ("torch", fused_t, math_t),
        ("jax", fused_j, math_j),
    ):
        assert_close(out, want, tol, f"{name} fused output")
        for got, exp, wrt in zip(grads, want_grads, "qkv", strict=True):
            assert_close(got, exp, tol, f"{name} fused d/d{wrt}")


def test_bfloat16_flash_with_groups_and_a_window():
    rng = np.random.default_rng(4)
    q, k, v, _, _, padding = inputs(rng, 1, 4, 2, 48, 8, "padding")
    expected = oracle(q, k, v, dense_mask(None, padding, False, 5, 48))
    options = {"window": 5, "block_q": 16, "block_k": 8}
    tq, tk, tv = (torch.tensor(a, dtype=torch.bfloat16) for a in (q, k, v))
    out_t = torch_impl.flash_attention(
        tq, tk, tv, key_padding_mask=torch.from_numpy(padding), **options
    )
    with jax_dtype_scope("bfloat16"):
        jq, jk, jv = (jnp.asarray(a, dtype=jnp.bfloat16) for a in (q, k, v))
        out_j = jax_impl.flash_attention(
            jq, jk, jv, key_padding_mask=jnp.asarray(padding), **options
        )
    assert out_t.dtype == torch.bfloat16 and out_j.dtype == jnp.bfloat16
    tol = tolerance("bfloat16")
    assert_close(out_t.float().numpy(), expected, tol, "torch bf16 flash")
    assert_close(np.asarray(out_j.astype(jnp.float32)), expected, tol, "jax bf16 flash")


# --- which blocks flash visits -----------------------------------------------------------------


def needed_blocks(t, block_q, block_k, is_causal, window):
    """Brute force: the (query block, key block) pairs holding at least one allowed pair."""
    allowed = dense_mask(None, None, is_causal, window, t)[0, 0]
    return {
        (i, j)
        for i in range(0, t, block_q)
        for j in range(0, t, block_k)
        if allowed[i : i + block_q, j : j + block_k].any()
    }


def torch_visited(t, block_q, block_k, is_causal, window, *, backward=False):
    seen = []
    original = torch_impl.flash.block_mask

    def spy(mask, padding, causal, win, rows, cols, device):
        seen.append((rows.start, cols.start))
        return original(mask, padding, causal, win, rows, cols, device)

    x = torch.randn(1, 2, t, 2, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(1, 1, t, 2, dtype=torch.float64, requires_grad=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_impl.flash, "block_mask", spy)
        out = torch_impl.flash_attention(
            x, kv, kv, is_causal=is_causal, window=window, block_q=block_q, block_k=block_k
        )
        n_forward = len(seen)
        if backward:
            out.sum().backward()
    return seen[:n_forward], seen[n_forward:]


def jax_visited(t, block_q, block_k, is_causal, window):
    """The key-block ranges of the JAX loops (``key_blocks``, ``query_blocks``), as pairs."""
    kb, qb = jax_impl.flash.key_blocks, jax_impl.flash.query_blocks
    forward = {
        (i, j * block_k)
        for i in range(0, t, block_q)
        for j in range(*map(int, kb(i, min(i + block_q, t), t, block_k, is_causal, window)))
    }
    backward = {
        (i * block_q, j)
        for j in range(0, t, block_k)
        for i in range(*map(int, qb(j, min(j + block_k, t), t, block_q, is_causal, window)))
    }
    return forward, backward


@pytest.mark.parametrize(
    ("t", "block_q", "block_k", "is_causal", "window"),
    [(16, 2, 2, False, 2), (17, 4, 3, False, 3), (16, 2, 2, True, 3), (12, 3, 5, True, None)],
)
def test_flash_visits_exactly_the_blocks_with_an_allowed_pair(
    t, block_q, block_k, is_causal, window
):
    needed = needed_blocks(t, block_q, block_k, is_causal, window)
    forward, backward = torch_visited(t, block_q, block_k, is_causal, window, backward=True)
    assert sorted(forward) == sorted(needed)  # each once, none skipped that holds a pair
    assert sorted(backward) == sorted(needed)
    jax_forward, jax_backward = jax_visited(t, block_q, block_k, is_causal, window)
    assert jax_forward == needed and jax_backward == needed
    if window is not None:  # and the window skipped most of them
        assert len(needed) < (-(-t // block_q)) * (-(-t // block_k))


def test_a_windowed_layer_costs_linear_in_t():
    """Blocks visited at T and 2T with window 4 and 4 x 4 blocks: about twice as many (the
    full layer needs four times as many)."""
    counts = {t: len(torch_visited(t, 4, 4, False, 4)[0]) for t in (64, 128)}
    # query block [4n, 4n + 3] sees keys [4n - 4, 4n + 7]: key blocks n - 1, n, n + 1, and
    # two at each edge, so 3 * (T / 4) - 2 blocks; the full layer visits (T / 4)^2.
    assert counts == {64: 3 * 16 - 2, 128: 3 * 32 - 2}


def test_window_and_group_errors_name_what_was_expected():
    q = torch.zeros(1, 4, 3, 2)
    k = torch.zeros(1, 3, 3, 2)
    for fn in (torch_impl.flash_attention, torch_impl.attention.math_attention):
        with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
            fn(q, q, q, window=0)
        with pytest.raises(ValueError, match="got 3 K/V heads, 4 query heads"):
            fn(q, k, k)
    jq, jk = jnp.zeros((1, 4, 3, 2)), jnp.zeros((1, 3, 3, 2))
    for fn in (jax_impl.flash_attention, jax_impl.attention.math_attention):
        with pytest.raises(ValueError, match="window must be an int >= 1, got -2"):
            fn(jq, jq, jq, window=-2)
        with pytest.raises(ValueError, match="got 3 K/V heads, 4 query heads"):
            fn(jq, jk, jk)


# --- RoPE in each framework --------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_in_both_frameworks_equals_the_numpy_definition(interleaved):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 8))
    positions = rng.integers(0, 50, size=(2, 7))
    inv = rope_inverse_frequencies(8, 10000.0)
    expected = apply_rope(x, positions, 10000.0, interleaved=interleaved)
    got_t = torch_impl.attention.apply_rope(
        torch.from_numpy(x),
        torch.from_numpy(positions),
        torch.from_numpy(inv),
        interleaved=interleaved,
    )
    with jax_dtype_scope("float64"):
        got_j = jax_impl.attention.apply_rope(
            jnp.asarray(x), jnp.asarray(positions), jnp.asarray(inv), interleaved=interleaved
        )
        assert got_j.dtype == jnp.float64
    assert_close(got_t.numpy(), expected, tolerance("float64"), "torch rope float64")
    assert_close(np.asarray(got_j), expected, tolerance("float64"), "jax rope float64")
    # float32 inputs rotate in float32 (angles included) and stay float32
    x32 = x.astype(np.float32)
    expected32 = apply_rope(x32, positions, 10000.0, interleaved=interleaved)
    got_t32 = torch_impl.attention.apply_rope(
        torch.from_numpy(x32),
        torch.from_numpy(positions),
        torch.from_numpy(inv),
        interleaved=interleaved,
    )
    got_j32 = jax_impl.attention.apply_rope(
        jnp.asarray(x32), jnp.asarray(positions), jnp.asarray(inv, dtype=jnp.float32),
        interleaved=interleaved,
    )  # fmt: skip
    assert got_t32.dtype == torch.float32 and got_j32.dtype == jnp.float32
    assert_close(got_t32.numpy(), expected32, tolerance("float32"), "torch rope float32")
    assert_close(np.asarray(got_j32), expected32, tolerance("float32"), "jax rope float32")


@pytest.mark.parametrize("is_causal", [False, True])
def test_framework_band_masks_equal_the_numpy_definition(is_causal):
    real = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=bool)
    expected = masks.make_attention_mask(real, is_causal=is_causal, q_len=7, window=2)
    got_t = torch_impl.make_attention_mask(
        torch.from_numpy(real), is_causal=is_causal, q_len=7, window=2
    )
    got_j = jax_impl.make_attention_mask(jnp.asarray(real), is_causal=is_causal, q_len=7, window=2)
    np.testing.assert_array_equal(got_t.numpy(), expected)
    np.testing.assert_array_equal(np.asarray(got_j), expected)
