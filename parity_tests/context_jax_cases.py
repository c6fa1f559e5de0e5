"""JAX context parallelism on 4 host devices against one device: run by
test_context_parallel.py in a child process (the file name keeps the main session from
collecting it). Every comparison uses the float32 row of shared/tolerances.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import context, parallel
from jax_impl.flash import flash_attention
from jax_impl.weights import from_weights
from parity_tests.context_torch_workers import (
    BLOCK,
    CASES,
    CONFIGS,
    MODEL_CASES,
    inputs,
    model_inputs,
    model_weights,
)
from shared.tolerances import assert_close, tolerance

F32 = tolerance("float32")


def setup_module() -> None:
    assert jax.device_count() == 4, "run through test_context_parallel.py (it sets 4 host devices)"
    jax.config.update("jax_default_matmul_precision", "highest")


def _with_gradients(attend):
    """out and (dq, dk, dv) of sum(out * w), in one program."""

    def run(q, k, v, w):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(w)

    return run


@functools.cache
def one_device(causal: bool):
    """Output and dq, dk, dv of the single-device flash kernel on the whole sequence."""
    q, k, v, w, real = (jnp.asarray(a) for a in inputs())

    def single(q, k, v):
        return flash_attention(q, k, v, key_padding_mask=real, is_causal=causal)

    return jax.jit(_with_gradients(single))(q, k, v, w)


def _compare(mesh, method, load_balance, causal, what):
    q, k, v, w, real = (jnp.asarray(a) for a in inputs())

    def sharded(q, k, v):
        return context.shard_attention(
            q, k, v, mesh,
            key_padding_mask=real, is_causal=causal, method=method, load_balance=load_balance,
            block_q=BLOCK, block_k=BLOCK,
        )  # fmt: skip

    run = _with_gradients(sharded)
    got, grads = jax.jit(run)(q, k, v, w)
    want, wants = one_device(causal)
    assert_close(np.asarray(got), np.asarray(want), F32, f"out, {what}")
    for name, g, g1 in zip(("dq", "dk", "dv"), grads, wants, strict=True):
        assert_close(np.asarray(g), np.asarray(g1), F32, f"{name}, {what}")
    forward = context.count_collectives(jax.make_jaxpr(sharded)(q, k, v))
    both = context.count_collectives(jax.make_jaxpr(run)(q, k, v, w))
    return forward, both


@pytest.mark.parametrize("seq", [2, 4])
@pytest.mark.parametrize(("method", "load_balance", "causal"), CASES)
def test_outputs_gradients_and_collectives_equal_one_device(seq, method, load_balance, causal):
    """Ring: one ppermute equation per tensor per step; the forward passes K, V, padding,
    positions W - 1 times (4 (W - 1)), the backward the same plus dK, dV each time, then dK,
    dV home once more (6 (W - 1) + 2). All-gather: 4 gathers, and autodiff's 2
    reduce-scatters (dK, dV) in the backward."""
    mesh = parallel.make_mesh(seq=seq)
    forward, both = _compare(mesh, method, load_balance, causal, f"seq={seq}")
    if method == "ring":
        assert dict(forward) == {"ppermute": 4 * (seq - 1)}
        assert dict(both) == {"ppermute": 4 * (seq - 1) + 6 * (seq - 1) + 2}
    else:
        assert dict(forward) == {"all_gather": 4}
        assert dict(both) == {"all_gather": 4, "reduce_scatter": 2}


@pytest.mark.parametrize(("data", "model"), [(2, 1), (1, 2)])
def test_data_or_model_beside_seq_equal_one_device(data, model):
    mesh = parallel.make_mesh(data=data, model=model, seq=2)
    _compare(mesh, "ring", True, True, f"data={data} x model={model} x seq=2")


def test_bad_splits_name_what_was_expected_and_what_was_got():
    q = jnp.zeros((2, 2, 12, 8))
    with pytest.raises(ValueError, match=r"seq_len=12 is not divisible by the mesh's 2 \* seq = 8"):
        context.shard_attention(q, q, q, parallel.make_mesh(seq=4), load_balance=True)
    with pytest.raises(ValueError, match="method must be one of"):
        context.shard_attention(q, q, q, parallel.make_mesh(seq=2), method="tree")
    with pytest.raises(ValueError, match=r"mesh data=1 x model=1 x seq=8 needs 8 devices, got 4"):
        parallel.make_mesh(seq=8)


@functools.cache
def _one_device_encoder(name: str):
    return _encoder_with_gradients(name, None)


def _encoder_with_gradients(name: str, mesh):
    """h (B, T, D) and the gradients of sum(h * w) of a model case's encoder, jitted; on
    ``mesh`` (parallelized, inputs placed on "data") or, with None, on one device."""
    config, method, load_balance, causal, _ = MODEL_CASES[name]
    cfg = CONFIGS[config]
    ids, mask, w = model_inputs(cfg)
    model = from_weights(model_weights(cfg), cfg)
    if mesh is not None:
        parallel.parallelize(model, mesh, context=method, load_balance=load_balance)
        ids, mask, w = parallel.place_batch((ids, mask, w), mesh)

    def loss(model, ids, mask, w):
        h = model(ids, mask, is_causal=causal)
        return (h * w).sum(), h

    (_, h), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, ids, mask, w)
    return np.asarray(h), {
        jax.tree_util.keystr(path): np.asarray(g)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }


@pytest.mark.parametrize(
    ("name", "data", "seq"),
    [
        ("model-ring-plain-full", 2, 2),
        ("model-all_gather-lb-causal", 1, 2),
        ("modern-ring-lb-causal", 1, 2),
    ],
)
def test_encoder_on_a_seq_mesh_equals_one_device(name, data, seq):
    """A whole encoder parallelized with ``context=`` (ring or all-gather, load-balanced
    causal or contiguous full, ragged padding; the modern case with RoPE, GQA and a sliding
    window): h and every parameter's gradient against one device, and each program holds
    the collectives of its method."""
    want_h, want_grads = _one_device_encoder(name)
    got_h, got_grads = _encoder_with_gradients(name, parallel.make_mesh(data=data, seq=seq))
    what = f"{name}, data={data} x seq={seq}"
    assert_close(got_h, want_h, F32, f"h, {what}")
    assert sorted(got_grads) == sorted(want_grads)
    for key, want in want_grads.items():
        assert_close(got_grads[key], want, F32, f"grad {key}, {what}")


def test_encoder_refuses_what_context_parallelism_cannot_honour():
    cfg = CONFIGS["model"]
    ids, mask, _ = model_inputs(cfg)
    model = from_weights(model_weights(cfg), cfg)
    with pytest.raises(ValueError, match="method must be one of"):
        parallel.parallelize(model, parallel.make_mesh(seq=2), context="tree")
    parallel.parallelize(model, parallel.make_mesh(seq=2))
    with pytest.raises(ValueError, match="never forms the"):
        model(ids, mask, return_attention=True)
    with pytest.raises(ValueError, match="not a general mask: expected mask=None"):
        model(ids, mask, mask=np.ones((1, 1, 16, 16), dtype=bool))
    with pytest.raises(ValueError, match="seq_len=13 is not divisible by the mesh's seq=2"):
        model(ids[:, :13], mask[:, :13])
