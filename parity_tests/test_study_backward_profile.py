"""``studies.backward_profile``: the profile's attribution, the op kinds it reports, and
the written-out layer its ablations start from. Nothing here asserts a timing."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl
from shared.tolerances import assert_close, tolerance
from studies import backward_profile


def test_wall_time_is_split_equally_among_the_thunks_running_at_each_instant():
    # a runs alone for 5 ns, with b for 5 ns, then b alone for 5 ns; c is alone later
    share, busy = backward_profile.shares([(0, 10, "a"), (5, 15, "b"), (20, 22, "c")])
    assert share == {"a": 7.5, "b": 7.5, "c": 2.0}
    assert busy == 17.0  # the idle gap 15..20 belongs to nobody


def test_a_transposed_left_operand_keeps_a_product_off_ynnpack():
    # What the analysis rests on: XLA:CPU gives X W to YNNPACK but runs the weight
    # gradient's X^T dY, whose left operand is contracted over its rows, on Eigen.
    x = jnp.ones((64, 32), jnp.float32)
    w = jnp.ones((32, 48), jnp.float32)
    dy = jnp.ones((64, 48), jnp.float32)
    forward = backward_profile.hlo_ops(jax.jit(jnp.matmul).lower(x, w).compile().as_text())
    weight_grad = jax.jit(lambda a, b: a.T @ b).lower(x, dy).compile().as_text()
    kinds = {op.kind for op in forward.values()}
    assert "GEMM (YNNPACK)" in kinds and "GEMM (Eigen)" not in kinds
    assert "GEMM (Eigen)" in {op.kind for op in backward_profile.hlo_ops(weight_grad).values()}


@pytest.mark.parametrize("formulation", list(backward_profile.FORMULATIONS))
def test_the_written_out_layer_equals_encoder_layer_with_the_same_weights(formulation):
    cfg = dataclasses.replace(
        backward_profile.bert_base_layer(), d_model=16, n_heads=2, d_ff=32, max_len=8
    )
    params = backward_profile.layer_parameters(cfg)
    module = jax_impl.EncoderLayer(cfg, rngs=nnx.Rngs(0))
    attention, ffn = module.attention, module.ffn
    for name, linear in {
        "q": attention.q,
        "k": attention.k,
        "v": attention.v,
        "o": attention.out,
        "ffn_in": ffn.in_proj,
        "ffn_out": ffn.out_proj,
    }.items():
        linear.kernel[...], linear.bias[...] = params[name], params[name + "_bias"]
    for name, norm in {"norm1": module.norm1, "norm2": module.norm2}.items():
        norm.scale[...], norm.bias[...] = params[name], params[name + "_bias"]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 16)), jnp.float32)
    expected, _ = module(x)
    options = backward_profile.FORMULATIONS[formulation]
    layer = backward_profile.layer_function(cfg, **options)
    assert_close(layer(params, x), expected, tolerance("float32", "cpu"), formulation)
    # the gradients too: the custom backward and the einsums must be the same derivative
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 16)), jnp.float32)
    reference = backward_profile.layer_function(cfg)

    def grad(f):
        return jax.grad(lambda p, x: jnp.vdot(f(p, x), cotangent), argnums=(0, 1))(params, x)

    got, want = grad(layer), grad(reference)
    for name in params:
        assert_close(got[0][name], want[0][name], tolerance("float32", "cpu"), name)
    assert_close(got[1], want[1], tolerance("float32", "cpu"), "input gradient")
