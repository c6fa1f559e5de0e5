"""``studies.train_step_options``: every formulation it times is the model as built (same
value, same gradient, and a different program), and every XLA option it passes is one this
jaxlib's XLA:CPU accepts. Nothing here asserts a timing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_impl
from parity_tests.helpers import random_weights, tiny_config
from shared.tolerances import assert_close, tolerance
from studies import train_step_options as study

CFG = tiny_config(activation="gelu", n_heads=2, max_len=8)


def _loss_and_grads(remat: str, names: tuple[str, ...]):
    """``(program text, loss, gradients)`` of ``<h, probe>`` for the tiny encoder, traced under
    the formulations ``names``; the weights (biases included) are random."""
    model = jax_impl.TransformerEncoder(CFG, remat=remat, rngs=nnx.Rngs(0))
    jax_impl.import_weights(model, random_weights(CFG, seed=3))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 6)))
    probe = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 16)), jnp.float32)

    def loss(params):
        return jnp.vdot(nnx.merge(graphdef, params, rest)(ids), probe)

    with study.formulation(names):
        value_and_grad = jax.jit(jax.value_and_grad(loss))
        text = value_and_grad.lower(params).as_text()
        value, grads = value_and_grad(params)
    return text, value, grads


@pytest.fixture(scope="module")
def as_built():
    return _loss_and_grads("none", ())


@pytest.mark.parametrize("name", list(study.FORMULATIONS))
def test_each_formulation_is_the_model_as_built_in_value_and_gradient(name, as_built):
    names = (name,)
    want_text, want, want_grads = as_built
    text, got, grads = _loss_and_grads(study.remat_of(names), names)
    assert text != want_text  # the formulation was traced, not silently skipped
    f32 = tolerance("float32", "cpu")
    assert_close(got, want, f32, f"{name}: loss")
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want_grads))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert_close(g, flat_want[path], f32, f"{name}: d loss / d {jax.tree_util.keystr(path)}")


def test_the_modules_are_restored_on_leaving_the_block(as_built):
    with study.formulation(tuple(study.FORMULATIONS)):
        pass
    assert _loss_and_grads("none", ())[0] == as_built[0]


def test_gelu_via_erf_is_the_exact_gelu():
    # 0.5 x (1 + erf(x / sqrt 2)) against the float64 closed form x Phi(x)
    from math import erf, sqrt

    x = np.linspace(-6, 6, 97).astype(np.float32)
    want = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x.astype(np.float64)])
    assert_close(study.gelu_erf(jnp.asarray(x)), want, tolerance("float32", "cpu"), "gelu")


def test_an_unknown_formulation_is_refused():
    with pytest.raises(ValueError, match="expected formulations"):
        with study.formulation(("gelu via tanh",)):
            pass


@pytest.mark.parametrize("name", list(study.OPTIONS))
def test_each_xla_option_is_accepted_by_xla_cpu(name):
    # an option this jaxlib does not know (or a bad enum value) fails at compile time
    options = {**jax_impl.train.compiler_options("cpu"), **study.OPTIONS[name]}
    x = jnp.ones((8, 4), jnp.float32)
    compiled = jax.jit(lambda a: jnp.tanh(a @ a.T), compiler_options=options).lower(x).compile()
    assert compiled(x).shape == (8, 8)


def test_the_formulations_compose(as_built):
    names = ("gelu via erf", "weight grads on YNNPACK", "layer norm custom_vjp")
    _, got, grads = _loss_and_grads("none", names)
    f32 = tolerance("float32", "cpu")
    assert_close(got, as_built[1], f32, "loss")
    flat_want = dict(jax.tree_util.tree_leaves_with_path(as_built[2]))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert_close(g, flat_want[path], f32, f"d loss / d {jax.tree_util.keystr(path)}")


def test_ynnpack_fusion_types_are_set_by_enum_name_and_emptied_by_an_empty_string():
    # ``xla_cpu_experimental_ynn_fusion_type`` is a repeated enum: as a compile option it
    # takes one value's full name ("dot", as XLA_FLAGS spells it, is refused), and "" leaves
    # YNNPACK no fusion at all, so that every product runs on Eigen
    x = jnp.ones((64, 32), jnp.float32)
    w = jnp.ones((32, 48), jnp.float32)

    def hlo(options):
        return jax.jit(jnp.matmul, compiler_options=options).lower(x, w).compile().as_text()

    assert "__ynn_fusion" in hlo({})
    assert "__ynn_fusion" in hlo(
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    )
    assert "__ynn_fusion" not in hlo({"xla_cpu_experimental_ynn_fusion_type": ""})
    with pytest.raises(Exception, match="not a valid enum value"):
        hlo({"xla_cpu_experimental_ynn_fusion_type": "dot"})


def test_the_remat_candidate_checkpoints_each_layer_with_dots_saveable():
    """Not the model's own remat (a custom VJP): ``jax.checkpoint`` with the dots policy."""
    model = jax_impl.TransformerEncoder(CFG, remat="block", rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.zeros((1, 4), jnp.int32)

    def loss(params):
        return nnx.merge(graphdef, params, rest)(ids).sum()

    with study.formulation(("remat dots saveable",)):
        text = str(jax.make_jaxpr(jax.grad(loss))(params))
        forward = str(jax.make_jaxpr(loss)(params))
    assert text.count("policy=DotsSaveable") == CFG.n_layers
    assert "custom_vjp_call" not in forward
    # the model's own remat again on leaving (a new function: tracing is cached per function)
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda p: loss(p))(params))
