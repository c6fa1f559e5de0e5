"""Parity: both implementations against the float64 NumPy oracle, and against each other.

The grid covers post/pre-norm x relu/gelu/gelu_tanh x six mask kinds x sinusoidal/learned
positions x BERT-style extras (token types, embedding norm, final norm) on and off. For each
case, in float64 and in float32: hidden states after every layer and attention weights of
both frameworks against the oracle; and the two frameworks against each other, including
gradients with respect to every parameter and to the embeddings.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity_tests.helpers import (
    build_pair,
    jax_forward_backward,
    make_inputs,
    random_weights,
    to_numpy,
    torch_forward_backward,
)
from shared import EncoderConfig, masks, reference
from shared.tolerances import assert_close, tolerance

B, T = 3, 7
MASK_KINDS = ("none", "padding", "causal", "padding_causal", "custom", "one_all_padding")


def small_config(**changes) -> EncoderConfig:
    """The small model most tests here use (dropout off), with ``changes``."""
    base = dict(vocab_size=50, d_model=16, n_heads=2, d_ff=24, n_layers=2, dropout=0.0)
    return EncoderConfig(**(base | changes))


def mask_case(kind: str, cfg: EncoderConfig, seed: int):
    """``(input_ids, token_type_ids, general mask (B|1, H|1, T, T) or None)`` for a mask kind."""
    pad = {"padding": "some", "padding_causal": "some", "one_all_padding": "all_one"}.get(
        kind, "none"
    )
    ids, attention_mask, types = make_inputs(cfg, B, T, seed=seed, pad=pad)
    if kind == "custom":  # an arbitrary per-head mask; some rows may have no key at all
        rng = np.random.default_rng(seed + 1)
        return ids, types, rng.random((B, cfg.n_heads, T, T)) < 0.6
    causal = kind in ("causal", "padding_causal")
    return ids, types, masks.make_attention_mask(attention_mask, is_causal=causal, q_len=T)


def grid():
    for norm_first, act, kind, pos, extras in itertools.product(
        (False, True),
        ("relu", "gelu", "gelu_tanh"),
        MASK_KINDS,
        ("sinusoidal", "learned"),
        (False, True),
    ):
        cfg = EncoderConfig(
            vocab_size=50,
            d_model=16,
            n_heads=2,
            d_ff=24,
            n_layers=2,
            max_len=16,
            dropout=0.0,
            activation=act,
            norm_first=norm_first,
            positional=pos,
            type_vocab_size=3 if extras else 0,
            embed_norm=extras,
            final_norm=extras,
        )
        name = f"{'pre' if norm_first else 'post'}-{act}-{kind}-{pos}-{'extras' if extras else 'plain'}"
        yield pytest.param(cfg, kind, id=name)


def compare_outputs(actual: dict, expected, tol, who: str) -> None:
    """Hidden states after every layer, final output and attention weights."""
    assert_close(actual["h"], expected.last_hidden_state, tol, f"{who}: output")
    for i, (a, e) in enumerate(zip(actual["hidden_states"], expected.hidden_states, strict=True)):
        assert_close(a, e, tol, f"{who}: hidden state {i}")
    for i, (a, e) in enumerate(zip(actual["attentions"], expected.attentions, strict=True)):
        assert_close(a, e, tol, f"{who}: attention weights of layer {i}")


def compare_grads(actual: dict, expected: dict, tol, who: str) -> None:
    assert actual["grads"].keys() == expected["grads"].keys()
    for name in expected["grads"]:
        assert_close(actual["grads"][name], expected["grads"][name], tol, f"{who}: d/d {name}")
    assert_close(
        actual["grad_embeddings"], expected["grad_embeddings"], tol, f"{who}: d/d embeddings"
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("cfg", "kind"), list(grid()))
def test_both_frameworks_match_the_oracle_and_each_other(cfg, kind, dtype, device, torch_device):
    seed = 7
    weights = random_weights(cfg, seed)
    ids, types, mask4d = mask_case(kind, cfg, seed)
    probe = np.random.default_rng(seed + 2).standard_normal((B, T, cfg.d_model))
    expected = reference.forward(weights, cfg, ids, None, types, attn_mask=mask4d)
    tol = tolerance(dtype, device)

    tm, jm = build_pair(cfg, weights, dtype=dtype, torch_device=torch_device)
    out_t = torch_forward_backward(tm, ids, types, mask4d, probe)
    out_j = jax_forward_backward(jm, ids, types, mask4d, probe, dtype=dtype)

    compare_outputs(out_t, expected, tol, f"torch {dtype} vs oracle")
    compare_outputs(out_j, expected, tol, f"jax {dtype} vs oracle")
    compare_outputs(
        out_j,
        reference.Output(out_t["h"], out_t["attentions"], out_t["hidden_states"]),
        tol,
        f"jax vs torch {dtype}",
    )
    compare_grads(out_j, out_t, tol, f"jax vs torch {dtype}")


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_fused_backend_equals_math_backend(kind, norm_first, device, torch_device):
    """Same weights, same masks: the fused kernels give the math path's outputs and gradients."""
    cfg = small_config(norm_first=norm_first, final_norm=norm_first)
    weights = random_weights(cfg, 3)
    ids, types, mask4d = mask_case(kind, cfg, 3)
    probe = np.random.default_rng(5).standard_normal((B, T, cfg.d_model))
    tol = tolerance("float32", device)
    outs = {}
    for backend in ("math", "fused"):
        tm, jm = build_pair(cfg, weights, backend=backend, torch_device=torch_device)
        # attention=False: asking for the weights would route "fused" through the math path
        outs[backend] = (
            torch_forward_backward(tm, ids, types, mask4d, probe, attention=False),
            jax_forward_backward(jm, ids, types, mask4d, probe, attention=False),
        )
    for i, name in enumerate(("torch", "jax")):
        fused, math_ = outs["fused"][i], outs["math"][i]
        assert_close(fused["h"], math_["h"], tol, f"{name}: fused vs math output")
        for j, (a, b) in enumerate(
            zip(fused["hidden_states"], math_["hidden_states"], strict=True)
        ):
            assert_close(a, b, tol, f"{name}: fused vs math hidden state {j}")
        compare_grads(fused, math_, tol, f"{name}: fused vs math")


def test_full_call_builds_the_same_mask_as_the_grid_path(device, torch_device):
    """model(ids, attention_mask, is_causal=True) equals the oracle with the same mask."""
    cfg = small_config()
    weights = random_weights(cfg, 11)
    ids, attention_mask, _ = make_inputs(cfg, B, T, seed=11, pad="all_one")
    expected = reference.forward(weights, cfg, ids, attention_mask, is_causal=True)
    tm, jm = build_pair(cfg, weights, torch_device=torch_device)
    tol = tolerance("float32", device)
    h_t = tm(ids, attention_mask, is_causal=True)
    h_j = jm(ids, attention_mask, is_causal=True)
    assert_close(to_numpy(h_t), expected.last_hidden_state, tol, "torch")
    assert_close(to_numpy(h_j), expected.last_hidden_state, tol, "jax")


@pytest.mark.parametrize("dtype", ["bfloat16"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_bfloat16_runs_in_both_frameworks_within_the_bf16_row(
    dtype, norm_first, device, torch_device
):
    from parity_tests.helpers import run_jax, run_torch

    cfg = EncoderConfig(
        vocab_size=50,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_layers=2,
        dropout=0.0,
        norm_first=norm_first,
        final_norm=norm_first,
    )
    weights = random_weights(cfg, 4)
    ids, attention_mask, _ = make_inputs(cfg, B, T, seed=4, pad="some")
    expected = reference.forward(weights, cfg, ids, attention_mask).last_hidden_state
    tm, jm = build_pair(cfg, weights, dtype=dtype, torch_device=torch_device)
    h_t = run_torch(tm, ids, attention_mask)
    h_j = run_jax(jm, ids, attention_mask, dtype=dtype)
    assert str(h_t.dtype) == "torch.bfloat16" and str(h_j.dtype) == "bfloat16"
    tol = tolerance(dtype, device)
    assert_close(to_numpy(h_t), expected, tol, "torch bfloat16 vs float64 oracle")
    assert_close(to_numpy(h_j), expected, tol, "jax bfloat16 vs float64 oracle")


def test_jax_fused_kernel_computes_softmax_in_float32_even_for_float64(device, torch_device):
    """``jax.nn.dot_product_attention`` casts logits to float32 (jax/_src/nn/functions.py:
    "Softmax is always computed in float32"): in float64 the fused backend is only
    float32-accurate, while PyTorch's fused kernel and both math paths keep float64."""
    cfg = small_config()
    weights = random_weights(cfg, 9)
    ids, types, mask4d = mask_case("padding", cfg, 9)
    expected = reference.forward(weights, cfg, ids, None, types, attn_mask=mask4d).last_hidden_state
    probe = np.zeros((B, T, cfg.d_model))
    tm, jm = build_pair(cfg, weights, dtype="float64", backend="fused", torch_device=torch_device)
    h_t = torch_forward_backward(tm, ids, types, mask4d, probe, attention=False)["h"]
    h_j = jax_forward_backward(jm, ids, types, mask4d, probe, dtype="float64", attention=False)["h"]
    assert_close(h_t, expected, tolerance("float64", device), "torch fused float64")
    assert_close(h_j, expected, tolerance("float32", device), "jax fused float64")
    with pytest.raises(AssertionError):
        assert_close(h_j, expected, tolerance("float64", device), "jax fused float64")


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([2, 4, 8]),
    d_ff=st.integers(1, 40),
    n_layers=st.integers(1, 3),
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 12),
    norm_first=st.booleans(),
    activation=st.sampled_from(["relu", "gelu", "gelu_tanh"]),
    positional=st.sampled_from(["sinusoidal", "learned"]),
    is_causal=st.booleans(),
    data=st.data(),
)
def test_random_configs_lengths_and_masks_agree(
    n_heads,
    head_dim,
    d_ff,
    n_layers,
    batch,
    seq_len,
    norm_first,
    activation,
    positional,
    is_causal,
    data,
    device,
    torch_device,
):
    cfg = EncoderConfig(
        vocab_size=30,
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        d_ff=d_ff,
        n_layers=n_layers,
        max_len=12,
        dropout=0.0,
        activation=activation,
        norm_first=norm_first,
        positional=positional,
        final_norm=norm_first,
    )
    seed = data.draw(st.integers(0, 2**16), label="seed")
    lengths = data.draw(st.lists(st.integers(0, seq_len), min_size=batch, max_size=batch))
    attention_mask = (np.arange(seq_len)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq_len))
    weights = random_weights(cfg, seed)
    expected = reference.forward(weights, cfg, ids, attention_mask, is_causal=is_causal)
    tm, jm = build_pair(cfg, weights, torch_device=torch_device)
    h_t, attn_t = tm(ids, attention_mask, is_causal=is_causal, return_attention=True)
    h_j, attn_j = jm(ids, attention_mask, is_causal=is_causal, return_attention=True)
    tol = tolerance("float32", device)
    assert_close(to_numpy(h_t), expected.last_hidden_state, tol, "torch vs oracle")
    assert_close(to_numpy(h_j), expected.last_hidden_state, tol, "jax vs oracle")
    assert_close(to_numpy(h_j), to_numpy(h_t), tol, "jax vs torch")
    for i in range(n_layers):
        assert_close(to_numpy(attn_j[i]), to_numpy(attn_t[i]), tol, f"attention {i}")


def test_fused_backend_calls_the_framework_kernel_and_math_does_not(monkeypatch):
    """Guard against a "fused" that silently runs the math path (or the reverse)."""
    import jax
    import torch.nn.functional as F

    calls = {"torch": 0, "jax": 0}
    torch_sdpa, jax_dpa = F.scaled_dot_product_attention, jax.nn.dot_product_attention

    def spy_torch(*args, **kwargs):
        calls["torch"] += 1
        return torch_sdpa(*args, **kwargs)

    def spy_jax(*args, **kwargs):
        calls["jax"] += 1
        return jax_dpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_torch)
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy_jax)
    cfg = small_config(n_layers=3)
    weights = random_weights(cfg, 1)
    ids, mask, _ = make_inputs(cfg, B, T, seed=1, pad="some")
    for backend, expected_calls in (("math", 0), ("fused", cfg.n_layers)):
        calls.update(torch=0, jax=0)
        tm, jm = build_pair(cfg, weights, backend=backend)
        tm(ids, mask)
        jm(ids, mask)
        assert calls == {"torch": expected_calls, "jax": expected_calls}, backend
    calls.update(torch=0, jax=0)  # asking for the weights runs the math path, documented
    tm(ids, mask, return_attention=True)
    jm(ids, mask, return_attention=True)
    assert calls == {"torch": 0, "jax": 0}
