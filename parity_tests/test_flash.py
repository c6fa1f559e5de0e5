"""The flash backend (FlashAttention-2 written out, ``torch_impl/flash.py``, ``jax_impl/flash.py``).

Flash equals math, outputs and gradients with respect to every parameter and the
embeddings, for every mask kind of the parity grid, in both frameworks, with block sizes
that leave partial blocks; float64 equals the oracle to the float64 row. Rows with no key
give zeros and finite gradients; jit equals eager; and XLA's own memory plan for the jitted
loss-and-gradient grows about linearly in T for flash, quadratically for math.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_impl
import jax_impl.flash
import torch_impl
import torch_impl.flash
from parity_tests.helpers import (
    build_pair,
    jax_dtype_scope,
    jax_forward_backward,
    make_inputs,
    random_weights,
    torch_forward_backward,
)
from parity_tests.test_parity import MASK_KINDS, B, T, compare_grads, mask_case, small_config
from shared import BACKENDS, reference
from shared.tolerances import assert_close, tolerance


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3 queries and 2 keys: T = 7 gives several blocks and a partial last one."""
    for module in (torch_impl.flash, jax_impl.flash):
        monkeypatch.setattr(module, "BLOCK_Q", 3)
        monkeypatch.setattr(module, "BLOCK_K", 2)


def run_both(cfg, weights, ids, types, mask4d, probe, *, backend, dtype="float32", masks=None):
    tm, jm = build_pair(cfg, weights, dtype=dtype, backend=backend)
    return (
        torch_forward_backward(tm, ids, types, mask4d, probe, attention=False, masks=masks),
        jax_forward_backward(
            jm, ids, types, mask4d, probe, dtype=dtype, attention=False, masks=masks
        ),
    )


def compare_runs(actual: dict, expected: dict, tol, who: str) -> None:
    assert_close(actual["h"], expected["h"], tol, f"{who}: output")
    for i, (a, e) in enumerate(
        zip(actual["hidden_states"], expected["hidden_states"], strict=True)
    ):
        assert_close(a, e, tol, f"{who}: hidden state {i}")
    compare_grads(actual, expected, tol, who)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_flash_equals_math_for_every_mask_kind(kind, small_blocks):
    """The general (B|1, H|1, T, T) mask path: outputs, hidden states, every gradient."""
    cfg = small_config(norm_first=True, final_norm=True)
    weights = random_weights(cfg, 3)
    ids, types, mask4d = mask_case(kind, cfg, 3)
    probe = np.random.default_rng(5).standard_normal((B, T, cfg.d_model))
    tol = tolerance("float32")
    flash = run_both(cfg, weights, ids, types, mask4d, probe, backend="flash")
    math_ = run_both(cfg, weights, ids, types, mask4d, probe, backend="math")
    for name, f, m in zip(("torch", "jax"), flash, math_, strict=True):
        compare_runs(f, m, tol, f"{name}: flash vs math, {kind}")


@pytest.mark.parametrize("is_causal", [False, True], ids=["padding", "padding_causal"])
def test_flash_equals_math_with_padding_and_causality_passed_down(is_causal, small_blocks):
    """The model's path: (B, T) key padding and ``is_causal`` reach the blocks undensified."""
    cfg = small_config()
    weights = random_weights(cfg, 4)
    ids, attention_mask, types = make_inputs(cfg, B, T, seed=4, pad="all_one")
    masks = {"key_padding_mask": attention_mask.astype(bool), "is_causal": is_causal}
    probe = np.random.default_rng(6).standard_normal((B, T, cfg.d_model))
    tol = tolerance("float32")
    flash = run_both(cfg, weights, ids, types, None, probe, backend="flash", masks=masks)
    math_ = run_both(cfg, weights, ids, types, None, probe, backend="math", masks=masks)
    for name, f, m in zip(("torch", "jax"), flash, math_, strict=True):
        compare_runs(f, m, tol, f"{name}: flash vs math")


@pytest.mark.parametrize("kind", ["padding_causal", "custom"])
def test_flash_float64_matches_the_oracle(kind, small_blocks):
    cfg = small_config()
    weights = random_weights(cfg, 8)
    ids, types, mask4d = mask_case(kind, cfg, 8)
    probe = np.random.default_rng(9).standard_normal((B, T, cfg.d_model))
    expected = reference.forward(weights, cfg, ids, None, types, attn_mask=mask4d)
    tol = tolerance("float64")
    flash = run_both(cfg, weights, ids, types, mask4d, probe, backend="flash", dtype="float64")
    math_ = run_both(cfg, weights, ids, types, mask4d, probe, backend="math", dtype="float64")
    for name, f, m in zip(("torch", "jax"), flash, math_, strict=True):
        assert_close(f["h"], expected.last_hidden_state, tol, f"{name} flash vs oracle")
        compare_grads(f, m, tol, f"{name}: flash vs math, float64")


# --- the attention function alone --------------------------------------------------------


def attention_inputs(rng, b, h, t, hd, mask_kind):
    q, k, v, d_out = (rng.standard_normal((b, h, t, hd)) for _ in range(4))
    mask = rng.random((b, h, t, t)) < 0.5 if mask_kind in ("custom", "all") else None
    padding = rng.random((b, t)) < 0.7 if mask_kind in ("padding", "all") else None
    return q, k, v, d_out, mask, padding


def dense(mask, padding, is_causal, t):
    full = np.ones((1, 1, t, t), dtype=bool)
    if mask is not None:
        full = full & mask
    if padding is not None:
        full = full & padding[:, None, None, :]
    if is_causal:
        full = full & np.tril(np.ones((t, t), dtype=bool))
    return full


def torch_flash_and_grads(q, k, v, d_out, mask, padding, is_causal, blocks, fn=None):
    fn = fn or torch_impl.flash_attention
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    m = None if mask is None else torch.from_numpy(mask)
    p = None if padding is None else torch.from_numpy(padding)
    out = fn(*qkv, m, key_padding_mask=p, is_causal=is_causal, block_q=blocks[0], block_k=blocks[1])
    grads = torch.autograd.grad(out, qkv, torch.from_numpy(d_out))
    return out.detach().numpy(), [g.numpy() for g in grads]


def jax_flash_and_grads(q, k, v, d_out, mask, padding, is_causal, blocks, jit=False):
    def f(q, k, v):
        return jax_impl.flash_attention(
            q, k, v, mask, key_padding_mask=padding, is_causal=is_causal,
            block_q=blocks[0], block_k=blocks[1],
        )  # fmt: skip

    f = jax.jit(f) if jit else f
    out, vjp = jax.vjp(f, *(jnp.asarray(a) for a in (q, k, v)))
    return np.asarray(out), [np.asarray(g) for g in vjp(jnp.asarray(d_out))]


def math_grads_torch(q, k, v, d_out, full):
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out, _ = torch_impl.scaled_dot_product_attention(*qkv, torch.from_numpy(full))
    return [g.numpy() for g in torch.autograd.grad(out, qkv, torch.from_numpy(d_out))]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(1, 20),
    block_q=st.integers(1, 9),
    block_k=st.integers(1, 9),
    mask_kind=st.sampled_from(["none", "padding", "custom", "all"]),
    is_causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_flash_attention_any_length_blocks_and_mask_float64(
    t, block_q, block_k, mask_kind, is_causal, seed
):
    """Outputs against the NumPy oracle, gradients against autograd through the math path."""
    rng = np.random.default_rng(seed)
    q, k, v, d_out, mask, padding = attention_inputs(rng, 2, 2, t, 4, mask_kind)
    full = dense(mask, padding, is_causal, t)
    expected, _ = reference.scaled_dot_product_attention(q, k, v, full)
    expected_grads = math_grads_torch(q, k, v, d_out, full)
    tol = tolerance("float64")
    blocks = (block_q, block_k)
    out_t, grads_t = torch_flash_and_grads(q, k, v, d_out, mask, padding, is_causal, blocks)
    with jax_dtype_scope("float64"):
        out_j, grads_j = jax_flash_and_grads(q, k, v, d_out, mask, padding, is_causal, blocks)
    for name, out, grads in (("torch", out_t, grads_t), ("jax", out_j, grads_j)):
        assert_close(out, expected, tol, f"{name} flash output")
        for g, e, wrt in zip(grads, expected_grads, "qkv", strict=True):
            assert_close(g, e, tol, f"{name} flash d/d{wrt}")


@pytest.mark.parametrize("blocks", [(4, 6), (12, 3), (5, 4)])
def test_flash_without_any_mask_whole_key_blocks_float64(blocks):
    """No mask, padding, causality or window, and T a multiple of Bc: the JAX loops build no
    block mask (``is_masked`` false); outputs and gradients still equal the oracle's."""
    rng = np.random.default_rng(sum(blocks))
    q, k, v, d_out, mask, padding = attention_inputs(rng, 2, 2, 12, 4, "none")
    assert not jax_impl.flash.is_masked(mask, padding, False, None, 12, blocks[1])
    full = dense(mask, padding, False, 12)
    expected, _ = reference.scaled_dot_product_attention(q, k, v, full)
    expected_grads = math_grads_torch(q, k, v, d_out, full)
    tol = tolerance("float64")
    with jax_dtype_scope("float64"):
        out, grads = jax_flash_and_grads(q, k, v, d_out, mask, padding, False, blocks, jit=True)
    assert_close(out, expected, tol, "jax flash output")
    for g, e, wrt in zip(grads, expected_grads, "qkv", strict=True):
        assert_close(g, e, tol, f"jax flash d/d{wrt}")


def loop_products(jaxpr, in_loop=False):
    """``(dot_general equation, its operands' ranks)`` and transposes found inside the bodies
    of ``while`` / ``scan`` loops of ``jaxpr``, recursively."""
    dots, transposes = [], []
    for eqn in jaxpr.eqns:
        if in_loop and eqn.primitive.name == "dot_general":
            dots.append((eqn, [len(x.aval.shape) for x in eqn.invars]))
        if in_loop and eqn.primitive.name == "transpose":
            transposes.append(eqn)
        inner = in_loop or eqn.primitive.name in ("while", "scan")
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    d, t = loop_products(sub, inner)
                    dots += d
                    transposes += t
    return dots, transposes


def test_jax_flash_loops_multiply_blocks_as_they_are_stored():
    """Inside the loops, every product of the forward and the backward contracts the left
    operand's last axis with the right operand's first non-batch axis, and nothing is
    transposed: XLA:CPU's GEMM (YNNPACK) takes only that form, and for any other XLA copies
    a transposed block on every loop step (``jax_impl/flash.py``, "Layout"). As many K/V
    heads as query heads (BERT's case); the kernel before this layout had 5 transposes."""
    x = jnp.ones((1, 4, 32, 8))
    for causal in (False, True):
        jaxpr = jax.make_jaxpr(
            jax.grad(
                lambda q, k, v, c=causal: jax_impl.flash_attention(
                    q, k, v, is_causal=c, block_q=8, block_k=16
                ).sum(),
                argnums=(0, 1, 2),
            )
        )(x, x, x).jaxpr
        dots, transposes = loop_products(jaxpr)
        assert len(dots) == 7, f"expected 2 forward + 5 backward products, got {len(dots)}"
        assert not transposes, f"transposes inside the loops: {transposes}"
        for eqn, (lhs_rank, _) in dots:
            (lhs_c, rhs_c), (lhs_b, rhs_b) = eqn.params["dimension_numbers"]
            assert tuple(lhs_b) == tuple(rhs_b) == tuple(range(len(lhs_b))), eqn
            assert tuple(lhs_c) == (lhs_rank - 1,), f"left operand contracted on {lhs_c}: {eqn}"
            assert tuple(rhs_c) == (len(rhs_b),), f"right operand contracted on {rhs_c}: {eqn}"


def test_rows_with_no_key_give_zeros_and_finite_gradients():
    rng = np.random.default_rng(0)
    q, k, v, d_out, mask, _ = attention_inputs(rng, 1, 2, 6, 4, "custom")
    mask[0, 1, 2] = False  # head 1, query 2: no key at all
    padding = np.array([[False] * 6])  # and, with it, every key of the sequence padded
    for m, p in ((mask, None), (None, padding)):
        out_t, grads_t = torch_flash_and_grads(q, k, v, d_out, m, p, False, (4, 4))
        with jax_dtype_scope("float64"):
            out_j, grads_j = jax_flash_and_grads(q, k, v, d_out, m, p, False, (4, 4))
        empty = ~dense(m, p, False, 6).any(axis=-1)  # (B|1, H|1, T) rows with no key
        for out, grads in ((out_t, grads_t), (out_j, grads_j)):
            assert np.all(out[np.broadcast_to(empty, out.shape[:-1])] == 0.0)
            assert all(np.all(np.isfinite(g)) for g in grads)
    assert np.all(grads_t[1] == 0.0) and np.all(grads_j[2] == 0.0)  # no key is used: no gradient


def test_jax_flash_jit_equals_eager():
    rng = np.random.default_rng(1)
    q, k, v, d_out, mask, padding = attention_inputs(rng, 2, 2, 11, 4, "all")
    args = (q, k, v, d_out, mask, padding, True, (4, 3))
    with jax_dtype_scope("float64"):
        out_e, grads_e = jax_flash_and_grads(*args)
        out_j, grads_j = jax_flash_and_grads(*args, jit=True)
    tol = tolerance("float64")
    assert_close(out_j, out_e, tol, "jit vs eager output")
    for a, b in zip(grads_j, grads_e, strict=True):
        assert_close(a, b, tol, "jit vs eager gradient")


def test_bfloat16_flash_accumulates_in_float32():
    """bfloat16 inputs within the bfloat16 row of a float32 math result, at T = 64 (a sum
    over 64 keys accumulated in bfloat16 itself would lose several more bits)."""
    rng = np.random.default_rng(2)
    q, k, v, _, mask, padding = attention_inputs(rng, 1, 2, 64, 8, "padding")
    full = dense(mask, padding, True, 64)
    expected, _ = reference.scaled_dot_product_attention(q, k, v, full)
    tol = tolerance("bfloat16")
    tq, tk, tv = (torch.tensor(a, dtype=torch.bfloat16) for a in (q, k, v))
    out_t = torch_impl.flash_attention(
        tq,
        tk,
        tv,
        key_padding_mask=torch.from_numpy(padding),
        is_causal=True,
        block_q=16,
        block_k=16,
    )
    assert out_t.dtype == torch.bfloat16
    with jax_dtype_scope("bfloat16"):
        jq, jk, jv = (jnp.asarray(a, dtype=jnp.bfloat16) for a in (q, k, v))
        out_j = jax_impl.flash_attention(
            jq,
            jk,
            jv,
            key_padding_mask=jnp.asarray(padding),
            is_causal=True,
            block_q=16,
            block_k=16,
        )
    assert out_j.dtype == jnp.bfloat16
    assert_close(out_t.float().numpy(), expected, tol, "torch bf16 flash")
    assert_close(np.asarray(out_j.astype(jnp.float32)), expected, tol, "jax bf16 flash")


def test_causal_flash_skips_the_blocks_above_the_diagonal():
    """Count the key blocks touched: causal T = 8 with 2 x 2 blocks needs 1 + 2 + 3 + 4."""
    seen = []
    original = torch_impl.flash.block_mask

    def spy(mask, padding, is_causal, window, rows, cols, device):
        seen.append((rows.start, cols.start))
        return original(mask, padding, is_causal, window, rows, cols, device)

    x = torch.randn(1, 1, 8, 2, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_impl.flash, "block_mask", spy)
        torch_impl.flash_attention(x, x, x, is_causal=True, block_q=2, block_k=2)
    assert len(seen) == 10 and all(col <= row for row, col in seen)


def jax_loss_and_grad_temp_bytes(attention, t: int) -> int:
    """XLA's temporary memory for the jitted loss-and-gradient of one attention call."""
    shape = jax.ShapeDtypeStruct((1, 2, t, 16), jnp.float32)  # (B, H, T, hd)

    def loss(q, k, v):
        return attention(q, k, v).sum()

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return grad.lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes


def test_jax_flash_memory_grows_linearly_in_t_and_math_quadratically():
    def flash(q, k, v):
        return jax_impl.flash_attention(q, k, v, is_causal=True, block_q=128, block_k=128)

    def math_(q, k, v):
        return jax_impl.attention.math_attention(q, k, v, is_causal=True)

    flash_ratio = jax_loss_and_grad_temp_bytes(flash, 2048) / jax_loss_and_grad_temp_bytes(
        flash, 1024
    )
    math_ratio = jax_loss_and_grad_temp_bytes(math_, 2048) / jax_loss_and_grad_temp_bytes(
        math_, 1024
    )
    assert flash_ratio < 2.5, f"flash: temp memory x{flash_ratio:.2f} from T=1024 to 2048"
    assert math_ratio > 3.5, f"math: temp memory x{math_ratio:.2f} from T=1024 to 2048"


def test_every_backend_has_one_function_and_runs_says_what_runs():
    assert tuple(torch_impl.attention.ATTENTION) == BACKENDS
    assert tuple(jax_impl.attention.ATTENTION) == BACKENDS
    tm = torch_impl.MultiHeadAttention(8, 2, backend="flash")
    jm = jax_impl.MultiHeadAttention(8, 2, backend="flash", rngs=nnx.Rngs(0))
    for m in (tm, jm):
        assert m.runs() == "flash" and m.runs(return_attention=True) == "math"
        assert m.attend is (torch_impl if m is tm else jax_impl).flash_attention


def test_jax_fused_kernel_falls_back_to_xla_without_a_gpu():
    assert jax_impl.attention.fused_kernel(jnp.float32, 8) == "xla"
    # asking for cuDNN on a machine without it fails inside the probe: XLA, no error
    assert jax_impl.attention.fused_kernel(jnp.bfloat16, 8, "gpu") == "xla"


def test_flash_rejects_empty_blocks():
    x = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="block sizes must be >= 1"):
        torch_impl.flash_attention(x, x, x, block_q=0)
    with pytest.raises(ValueError, match="block sizes must be >= 1"):
        y = jnp.asarray(x.numpy())
        jax_impl.flash_attention(y, y, y, block_k=0)


def test_torch_flash_runs_eagerly_inside_a_compiled_train_step(small_blocks):
    """Traced by torch.compile, the Python block loops would unroll (compile time grows
    with T^2 / (Br Bc)): forward and backward are excluded from compilation, so a compiled
    step runs every block at run time, as eager does, and computes the same gradients."""
    cfg = small_config(n_layers=1)
    model = torch_impl.TransformerEncoder(cfg, backend="flash").eval()
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 7)))
    calls = []
    original = torch_impl.flash.block_mask

    def spy(*args):
        calls.append(1)
        return original(*args)

    def step():
        model.zero_grad()
        model(ids, is_causal=True).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_impl.flash, "block_mask", spy)
        eager = step()
        per_step, calls[:] = len(calls), []
        compiled_step = torch.compile(step)
        compiled_step()  # compiles
        calls.clear()
        compiled = compiled_step()
    assert per_step > 0 and len(calls) == per_step  # forward and backward blocks, at run time
    for name, grad in eager.items():
        assert_close(compiled[name], grad, tolerance("float32"), f"gradient of {name}")
