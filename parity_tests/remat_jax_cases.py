"""Activation checkpointing on JAX meshes of 2 host devices: run by test_remat.py in a child
process (the file name keeps the main session from collecting it). A model with
``remat="block"`` or ``"attention"``, parallelized over a "data" or a "seq" mesh (context
parallelism: the attention runs under ``shard_map`` inside the recomputed block), against
the same weights without remat on one device: outputs and every parameter gradient, under
``jax.jit``, with padding. The float32 row of shared/tolerances.py."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from jax_impl import parallel
from jax_impl.encoder import TransformerEncoder
from jax_impl.weights import import_weights
from parity_tests.context_torch_workers import MODEL, model_inputs, model_weights
from shared.tolerances import assert_close, tolerance

F32 = tolerance("float32")


def setup_module() -> None:
    assert jax.device_count() == 2, "run through test_remat.py (it sets 2 host devices)"
    jax.config.update("jax_default_matmul_precision", "highest")


def _h_and_gradients(remat: str, mesh, causal: bool):
    cfg = MODEL
    ids, mask, w = model_inputs(cfg)
    model = TransformerEncoder(cfg, backend="flash", remat=remat, rngs=nnx.Rngs(0))
    import_weights(model, model_weights(cfg))
    model.eval()
    if mesh is not None:
        parallel.parallelize(model, mesh, context="ring", load_balance=causal)
        ids, mask, w = parallel.place_batch((ids, mask, w), mesh)

    def loss(model, ids, mask, w):
        h = model(ids, mask, is_causal=causal)
        return (h * w).sum(), h

    (_, h), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, ids, mask, w)
    return np.asarray(h), {
        jax.tree_util.keystr(path): np.asarray(g)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }


@functools.cache
def _one_device(causal: bool):
    return _h_and_gradients("none", None, causal)


@pytest.mark.parametrize("remat", ["block", "attention"])
@pytest.mark.parametrize(("data", "seq", "causal"), [(2, 1, False), (1, 2, True)])
def test_remat_on_a_mesh_gives_the_outputs_and_gradients_of_one_device(remat, data, seq, causal):
    want_h, want_grads = _one_device(causal)
    mesh = parallel.make_mesh(data=data, seq=seq)
    got_h, got_grads = _h_and_gradients(remat, mesh, causal)
    what = f"remat={remat}, data={data} x seq={seq}"
    assert_close(got_h, want_h, F32, f"h, {what}")
    assert sorted(got_grads) == sorted(want_grads) and want_grads
    for key, want in want_grads.items():
        assert np.any(want != 0), f"{key} has a zero gradient: the check would be empty"
        assert_close(got_grads[key], want, F32, f"grad {key}, {what}")
