"""Activation checkpointing (``remat="block"|"attention"``) changes what the backward keeps,
never what it computes: outputs and the gradient of every parameter equal the ones without
remat, in both frameworks, on the math and flash backends, with padding, under ``jax.jit``
and on meshes; and remat really recomputes (a ``custom_vjp`` per checkpointed block in JAX's
jaxpr, the attention run again in PyTorch's backward, fewer tensors saved for the backward),
in the backward's order (XLA's plan shrinks by the activations of all layers but one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import jax_impl.train
import torch_impl
from benchmarks import cli
from benchmarks.suites import SUITES, Selection, expand
from parity_tests.helpers import (
    JAX_DTYPES,
    TORCH_DTYPES,
    jax_dtype_scope,
    jax_forward_backward,
    make_inputs,
    random_weights,
    run_jax_cases,
    tiny_config,
    torch_forward_backward,
)
from shared import EncoderConfig
from shared.backends import REMATS
from shared.tolerances import assert_close, tolerance
from studies import memory_plan
from studies import remat as remat_study

B, T = 3, 8


def _torch_model(cfg, weights, remat, backend, dtype):
    model = torch_impl.TransformerEncoder(
        cfg, backend=backend, dtype=TORCH_DTYPES[dtype], remat=remat
    )
    torch_impl.import_weights(model, weights)
    return model.eval()


def _jax_model(cfg, weights, remat, backend, dtype):
    with jax_dtype_scope(dtype):
        model = jax_impl.TransformerEncoder(
            cfg, backend=backend, dtype=JAX_DTYPES[dtype], remat=remat, rngs=nnx.Rngs(0)
        )
        jax_impl.import_weights(model, weights)
    model.eval()
    return model


def _run(framework, cfg, remat, backend, dtype):
    weights = random_weights(cfg, seed=1)
    ids, mask, types = make_inputs(cfg, B, T, seed=2, pad="some")
    probe = np.random.default_rng(3).standard_normal((B, T, cfg.d_model))
    masks = {"key_padding_mask": mask}
    if framework == "torch":
        model = _torch_model(cfg, weights, remat, backend, dtype)
        return torch_forward_backward(model, ids, types, None, probe, attention=False, masks=masks)
    model = _jax_model(cfg, weights, remat, backend, dtype)
    return jax_forward_backward(
        model, ids, types, None, probe, dtype=dtype, attention=False, masks=masks
    )


def _assert_same(got, want, dtype, what):
    tol = tolerance(dtype)
    assert_close(got["h"], want["h"], tol, f"{what}: output")
    for i, (g, w) in enumerate(zip(got["hidden_states"], want["hidden_states"], strict=True)):
        assert_close(g, w, tol, f"{what}: hidden state {i}")
    assert set(got["grads"]) == set(want["grads"]) and want["grads"]
    for name, w in want["grads"].items():
        assert np.any(w != 0), f"{what}: {name} has a zero gradient: the check would be empty"
        assert_close(got["grads"][name], w, tol, f"{what}: gradient of {name}")
    assert_close(got["grad_embeddings"], want["grad_embeddings"], tol, f"{what}: d/d embeddings")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["math", "flash"])
@pytest.mark.parametrize("remat", ["block", "attention"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_remat_gives_the_outputs_and_gradients_of_no_remat(framework, remat, backend, dtype):
    cfg = tiny_config(type_vocab_size=2)
    want = _run(framework, cfg, "none", backend, dtype)
    got = _run(framework, cfg, remat, backend, dtype)
    _assert_same(got, want, dtype, f"{framework} {backend} {dtype} remat={remat}")


@pytest.mark.parametrize("remat", ["block", "attention"])
def test_remat_on_a_pre_norm_causal_model_gives_the_same_gradients(remat):
    cfg = tiny_config(norm_first=True, final_norm=True, causal=True)
    for framework in ("torch", "jax"):
        want = _run(framework, cfg, "none", "math", "float32")
        got = _run(framework, cfg, remat, "math", "float32")
        _assert_same(got, want, "float32", f"{framework} pre-norm causal remat={remat}")


def _jax_jit_loss_and_grads(model, ids, mask):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        h = nnx.merge(graphdef, params, rest)(ids, mask)
        return (h * jnp.cos(h)).sum()

    return graphdef, params, rest, loss


@pytest.mark.parametrize("backend", ["math", "flash"])
@pytest.mark.parametrize("remat", ["block", "attention"])
def test_jax_remat_under_jit_gives_the_gradients_of_no_remat(remat, backend):
    cfg = tiny_config()
    weights = random_weights(cfg, seed=1)
    ids, mask, _ = make_inputs(cfg, B, T, seed=2, pad="some")
    results = {}
    for r in ("none", remat):
        model = _jax_model(cfg, weights, r, backend, "float32")
        _, params, _, loss = _jax_jit_loss_and_grads(model, jnp.asarray(ids), jnp.asarray(mask))
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        results[r] = (value, jax.tree.leaves(grads))
    tol = tolerance("float32")
    assert_close(results[remat][0], results["none"][0], tol, "loss")
    for g, w in zip(results[remat][1], results["none"][1], strict=True):
        assert np.any(np.asarray(w) != 0)
        assert_close(g, w, tol, f"jit gradient, remat={remat}")


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("remat", ["block", "attention"])
def test_remat_replays_the_same_dropout_masks(remat, jit):
    """In train mode with dropout, the recomputed forward must draw the same masks; if it
    drew new ones the gradients would differ from the no-remat run with the same seed."""
    cfg = tiny_config(dropout=0.3)
    weights = random_weights(cfg, seed=1)
    ids, mask, _ = make_inputs(cfg, B, T, seed=2, pad="some")
    torch_grads, jax_grads = {}, {}
    for r in ("none", remat):
        model = _torch_model(cfg, weights, r, "math", "float32").train()
        torch.manual_seed(5)
        h = model(torch.as_tensor(ids), torch.as_tensor(mask))
        (h * torch.cos(h)).sum().backward()
        torch_grads[r] = [p.grad.numpy().copy() for p in model.parameters()]
        jm = _jax_model(cfg, weights, r, "math", "float32")
        jm.train()
        graphdef, params, rest = nnx.split(jm, nnx.Param, ...)

        def loss(params, rest, graphdef=graphdef):
            m = nnx.merge(graphdef, params, rest, copy=True)
            h = m(jnp.asarray(ids), jnp.asarray(mask))
            return (h * jnp.cos(h)).sum()

        grad = jax.jit(jax.grad(loss)) if jit else jax.grad(loss)
        jax_grads[r] = jax.tree.leaves(grad(params, rest))
    tol = tolerance("float32")
    for grads in (torch_grads, jax_grads):
        for g, w in zip(grads[remat], grads["none"], strict=True):
            assert_close(g, w, tol, f"gradient with dropout, remat={remat}")


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("where", ["TransformerEncoder", "Encoder"])
def test_an_unknown_remat_is_a_value_error_naming_the_choices(framework, where):
    cfg = tiny_config()
    impl = torch_impl if framework == "torch" else jax_impl
    cls = getattr(impl.encoder, where)
    kwargs = {} if framework == "torch" else {"rngs": nnx.Rngs(0)}
    with pytest.raises(ValueError, match=r"remat='full' must be one of \('none', 'block', "):
        cls(cfg, remat="full", **kwargs)


@pytest.mark.parametrize("remat", REMATS)
def test_jax_forward_jaxpr_holds_one_recomputed_block_per_layer_with_remat(remat):
    """Each checkpointed call is one ``custom_vjp`` (``jax_impl.encoder._checkpointed``):
    one per layer with block or attention, none without remat."""
    cfg = tiny_config()
    model = _jax_model(cfg, random_weights(cfg), remat, "math", "float32")
    ids, mask, _ = make_inputs(cfg, B, T, pad="some")
    _, params, _, loss = _jax_jit_loss_and_grads(model, jnp.asarray(ids), jnp.asarray(mask))
    names = list(_primitives(jax.make_jaxpr(loss)(params).jaxpr))
    expected = 0 if remat == "none" else cfg.n_layers
    assert names.count("custom_vjp_call") == expected, names


def _primitives(jaxpr):
    """The names of every primitive in ``jaxpr``, nested jaxprs (jit, checkpoint) included."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds a Jaxpr
            if isinstance(inner, jax.extend.core.Jaxpr):
                yield from _primitives(inner)


@pytest.mark.parametrize("remat", REMATS)
def test_torch_backward_runs_the_attention_again_only_with_remat(remat):
    cfg = tiny_config()
    model = _torch_model(cfg, random_weights(cfg), remat, "math", "float32")
    ids, mask, _ = make_inputs(cfg, B, T, pad="some")
    calls = []
    for layer in model.encoder.layers:
        # a pre-hook: the recomputation stops once it has the tensors the backward needs
        # (non-reentrant checkpoint's early stop), before a forward hook would run
        layer.attention.register_forward_pre_hook(lambda *_: calls.append(1))
    h = model(torch.as_tensor(ids), torch.as_tensor(mask))
    assert len(calls) == cfg.n_layers
    h.pow(2).sum().backward()
    assert len(calls) == cfg.n_layers * (1 if remat == "none" else 2)


def test_torch_keeps_less_for_the_backward_with_block_than_attention_than_none():
    """Bytes PyTorch keeps for the backward (``saved_tensors_hooks`` plus checkpoint inputs):
    block < attention < none. Math backend at T=64: the (B, H, T, T) weights dominate what
    the attention keeps, so recomputing it shows."""
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=64)
    kept = {r: remat_study.torch_saved(cfg, "math", r, batch=1, seq_len=64) for r in REMATS}
    assert kept["block"] < kept["attention"] < kept["none"], kept
    # recomputing the attention frees at least its softmax weights, (H, T, T) float32 a layer
    assert kept["none"] - kept["attention"] >= cfg.n_layers * 2 * 64 * 64 * 4
    # block keeps each layer's input, (T, D) float32, and nothing of the layer's inside
    assert kept["block"] < 2 * cfg.n_layers * 64 * cfg.d_model * 4


def test_jax_recomputation_survives_xla_the_compiled_gradient_has_more_matmuls():
    """XLA could merge the recomputed forward with the original one (CSE); the compiled
    program of the gradient has more dot ops with remat: block recomputes the layer's
    matmuls, attention only those of the attention sub-block, a subset."""
    cfg = tiny_config()
    dots = {r: remat_study.jax_dots(cfg, "math", r, batch=1, seq_len=T) for r in REMATS}
    assert dots["none"] < dots["attention"] < dots["block"], dots


# --- the benchmark's --remat axis --------------------------------------------------------------


def test_benchmark_remat_axis_gives_each_backward_row_of_ours_one_row_per_policy():
    sel = Selection(
        frameworks=("torch", "jax"),
        device="cpu",
        variants=("ours-math", "ours-flash", "native"),
        phases=("forward", "train_step"),
        modes=("eager",),
        batch=1,
        seq_lens=(16,),
        remats=REMATS,
    )
    cases = expand(SUITES["quick"], sel)
    rows = {(c.framework, c.variant, c.phase, c.remat) for c in cases}
    assert len(rows) == len(cases)
    for fw in ("torch", "jax"):
        for v in ("ours-math", "ours-flash"):
            assert {c.remat for c in cases if (c.framework, c.variant) == (fw, v)} == set(REMATS)
            assert (fw, v, "forward", "none") in rows
        assert {c.remat for c in cases if c.phase == "forward" or c.variant == "native"} == {"none"}
    # the rows of one parity pair (remat included in its key) are adjacent, torch first
    keys = [c.pair_key for c in cases]
    for key in set(keys):
        at = [i for i, k in enumerate(keys) if k == key]
        assert at == list(range(at[0], at[-1] + 1)), key
        assert [cases[i].framework for i in at] == sorted(
            (cases[i].framework for i in at), key=("torch", "jax").index
        )


def test_benchmark_refuses_an_unknown_remat_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--remat", "none,full"])
    assert exit_info.value.code == 2
    assert "none, block, attention" in capsys.readouterr().err


def test_benchmark_train_step_runs_with_each_remat_and_records_it(tmp_path):
    """``python -m benchmarks --remat none,block,attention`` end to end on a tiny config."""
    config = tmp_path / "tiny.json"
    fields = dict(vocab_size=100, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16)
    config.write_text(json.dumps(fields))
    args = ("--config", str(config), "--seq-lens", "16", "--batch", "2", "--device", "cpu")
    args += ("--repeats", "2", "--warmup", "0", "--threads", "1", "--modes", "eager")
    args += ("--variants", "ours-math", "--phases", "train_step", "--no-plots")
    args += ("--remat", "none,block,attention", "--out", str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted((r["framework"], r["remat"]) for r in rows) == sorted(
        (fw, r) for fw in ("torch", "jax") for r in REMATS
    )
    assert all(r["parity_ok"] for r in rows)


def test_jax_remat_shrinks_xla_cpu_plan_with_the_memory_optimised_scheduler():
    """Compiled with ``jax_impl.train.compiler_options("cpu")`` (the memory-optimised
    scheduler, as the Trainer and the benchmarks compile), the plan of the gradient shrinks
    in the policies' order. Math backend, 4 layers, T=64: the (H, T, T) weights dominate."""
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=4, max_len=64)
    options = jax_impl.train.compiler_options("cpu")
    assert options  # a CPU gets the memory-optimised scheduler

    def temporaries(remat, options):
        c = memory_plan.compiled(cfg, "math", 1, 64, remat=remat, options=options)
        return c.memory_analysis().temp_size_in_bytes

    planned = {r: temporaries(r, options) for r in REMATS}
    assert planned["block"] < planned["attention"] < planned["none"], planned
    # block frees at least the (H, T, T) float32 weights of all layers but one
    assert planned["none"] - planned["block"] >= (cfg.n_layers - 1) * 2 * 64 * 64 * 4
    assert jax_impl.train.compiler_options("gpu") == {}
    assert jax_impl.train.compiler_options("cpu", memory_scheduler=False) == {}


@pytest.mark.parametrize("scheduler", ["memory", "concurrency"])
def test_jax_block_remat_frees_all_layers_ffn_activations_but_one_in_either_order(scheduler):
    """The backward recomputes a block only once the cotangent of its output exists, so no
    instruction order can recompute early: with either XLA:CPU scheduler, the plan of the
    gradient with ``remat="block"`` is below the plan without remat by at least N - 1 of
    the (T, F) FFN pre-activations (without remat the backward needs every layer's, for
    GELU's derivative, so all N are live when the forward ends; with block at most the
    layer being differentiated holds one). D=16 against F=512: the FFN dominates. With
    ``jax.checkpoint`` (the recomputation depending only on the block's input) the
    concurrency-optimised order kept more with block than without, and the memory-optimised
    one saved less than one such array (the old implementation fails this test)."""
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=512, n_layers=2, max_len=16)
    memory = scheduler == "memory"
    options = jax_impl.train.compiler_options("cpu", memory_scheduler=memory)

    def temporaries(remat):
        c = memory_plan.compiled(cfg, "fused", 1, T_PLAN, remat=remat, options=options)
        return c.memory_analysis().temp_size_in_bytes

    planned = {r: temporaries(r) for r in ("none", "block")}
    ffn_activation = T_PLAN * cfg.d_ff * 4  # (T, F) float32
    saved = planned["none"] - planned["block"]
    assert saved >= (cfg.n_layers - 1) * ffn_activation, (planned, ffn_activation)


T_PLAN = 16


def test_jax_remat_on_data_and_seq_meshes_gives_the_gradients_of_one_device():
    """``remat_jax_cases.py`` in a child process with 2 host devices: block and attention
    remat on a data=2 mesh and on a seq=2 mesh (context parallelism, causal, load-balanced
    ring), h and every parameter gradient against one device without remat."""
    rc, log = run_jax_cases("remat_jax_cases.py", devices=2, timeout=300)
    assert rc == 0, log[-6000:]
    assert "4 passed" in log and "failed" not in log and "skipped" not in log, log[-3000:]


@pytest.mark.parametrize("remat", ["block", "attention"])
def test_torch_flash_remat_inside_a_compiled_train_step_gives_the_gradients_of_no_remat(remat):
    """Our flash function is a graph break under ``torch.compile``; a step compiled with its
    backward inside recomputes the block around it (the reentrant checkpoint: the
    non-reentrant one raised ``CheckpointError`` there, unpacking a saved tensor twice)."""
    cfg = tiny_config()
    weights = random_weights(cfg, seed=1)
    ids = torch.as_tensor(make_inputs(cfg, B, T, seed=2)[0])

    def gradients(remat, compiled):
        model = _torch_model(cfg, weights, remat, "flash", "float32")

        def step():
            model.zero_grad(set_to_none=True)
            loss = model(ids).square().mean()
            loss.backward()
            return loss

        run = torch.compile(step) if compiled else step
        run()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = gradients("none", compiled=False)
    got = gradients(remat, compiled=True)
    assert set(got) == set(want) and want
    for name, w in want.items():
        assert_close(got[name], w, tolerance("float32"), f"compiled flash remat={remat}: {name}")


def test_torch_flash_block_remat_with_dropout_in_a_compiled_step_fails_loudly():
    """With dropout drawn the layer keeps the non-reentrant checkpoint (the reentrant one
    replays other masks inside a compiled step: wrong gradients, silently); with the
    backward inside the compiled step that is PyTorch's ``CheckpointError``, not a wrong
    gradient. Eagerly it is right (``test_remat_replays_the_same_dropout_masks``)."""
    from torch.utils.checkpoint import CheckpointError

    cfg = tiny_config(dropout=0.1)
    model = torch_impl.TransformerEncoder(cfg, backend="flash", remat="block").train()
    ids = torch.as_tensor(make_inputs(cfg, B, T, seed=2)[0])

    def step():
        loss = model(ids).square().mean()
        loss.backward()
        return loss

    with pytest.raises(CheckpointError, match="unpacked once"):
        torch.compile(step)()
