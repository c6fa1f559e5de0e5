"""Places where PyTorch and JAX/Flax silently disagree, each shown to exist in the installed
versions and shown to be handled by this project. (More in test_masks, test_native,
test_training and test_parity; the README's table says which test pins which trap.)"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import jax_impl
import jax_impl.precision
import torch_impl
import torch_impl.precision
from parity_tests.helpers import build_pair, make_inputs, random_weights, to_numpy
from shared import EncoderConfig, reference
from shared.tolerances import assert_close, tolerance


def _layer_norms():
    """PyTorch's LayerNorm, Flax's with its defaults, and ours (Flax's, configured)."""
    return (
        lambda x: torch.nn.functional.layer_norm(torch.tensor(x), (64,), eps=1e-5).numpy(),
        lambda x: np.asarray(nnx.LayerNorm(64, rngs=nnx.Rngs(0))(jnp.asarray(x))),
        lambda x: np.asarray(
            jax_impl.encoder.layer_norm(EncoderConfig(d_model=64), None, nnx.Rngs(0))(
                jnp.asarray(x)
            )
        ),
    )


def test_flax_layernorm_fast_variance_cancels_catastrophically_and_ours_does_not():
    """Flax's default variance E[x^2] - E[x]^2 loses every digit when |mean| >> spread. The input
    is so ill-conditioned (mean 100, spread 0.1) that float32 itself cannot reach the 1e-5 row,
    so each is measured against the float64 truth: ours is as good as PyTorch's."""
    x = (100.0 + 0.1 * np.random.default_rng(0).standard_normal((4, 64))).astype(np.float32)
    x64 = x.astype(np.float64)
    truth = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    torch_ln, flax_default, ours = _layer_norms()
    err_torch = np.abs(torch_ln(x) - truth).max()
    assert np.abs(flax_default(x) - truth).max() > 100 * err_torch  # digits lost, not rounding
    assert np.abs(ours(x) - truth).max() <= 2 * err_torch


def test_flax_layernorm_default_eps_differs_from_pytorchs_and_ours_does_not():
    """Flax's epsilon is 1e-6, PyTorch's 1e-5: it matters when the variance is small."""
    x = (3e-3 * np.random.default_rng(1).standard_normal((4, 64))).astype(np.float32)
    torch_ln, flax_default, ours = _layer_norms()
    assert nnx.LayerNorm(64, rngs=nnx.Rngs(0)).epsilon == 1e-6
    assert np.abs(flax_default(x) - torch_ln(x)).max() > 1e-2
    assert_close(ours(x), torch_ln(x), tolerance("float32"), "our LayerNorm vs PyTorch's")


def test_jax_gelu_defaults_to_tanh_while_pytorch_is_exact():
    x = np.linspace(-6, 6, 2001)
    exact = torch.nn.functional.gelu(torch.tensor(x)).numpy()
    assert np.abs(np.asarray(jax.nn.gelu(jnp.asarray(x, jnp.float32))) - exact).max() > 1e-4
    for name in ("gelu", "gelu_tanh"):
        got_t = torch_impl.encoder.activation(name, torch.tensor(x)).numpy()
        with jax.enable_x64(True):
            got_j = np.asarray(jax_impl.encoder.activation(name, jnp.asarray(x)))
        want = reference.activation(name, x)
        assert_close(got_t, want, tolerance("float64"), f"torch {name}")
        assert_close(got_j, want, tolerance("float64"), f"jax {name}")


def test_parity_runs_with_full_float32_matmul_precision_in_both_frameworks():
    """conftest.py sets these for the whole suite; on GPUs JAX would otherwise use TF32."""
    assert jax.config.jax_default_matmul_precision == "highest"
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"


def test_precision_helpers_set_each_mode_and_restore_the_previous_flags():
    """One helper per framework sets the flags that tests, benchmarks and examples rely on."""
    with (
        jax_impl.precision.matmul_precision("tf32") as jax_flags,
        torch_impl.precision.matmul_precision("tf32") as torch_flags,
    ):
        assert jax_flags == {"jax_default_matmul_precision": "tensorfloat32"}
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
        assert torch_flags == {
            "torch_cuda_matmul_allow_tf32": True,
            "torch_cudnn_allow_tf32": True,
            "torch_float32_matmul_precision": "high",
        }
    assert jax.config.jax_default_matmul_precision == "highest"
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match=re.escape("mode='fp32' must be one of")):
        torch_impl.precision.set_matmul_precision("fp32")


def test_pytorch_is_causal_without_a_mask_is_silently_not_causal():
    """``nn.TransformerEncoder(src, is_causal=True)`` with no mask is a hint only (pytorch#96941):
    the installed version applies no causal masking at all. Ours builds the mask itself."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    native = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    src = torch.randn(1, 5, 8)
    with torch.no_grad():
        hinted = native(src, is_causal=True)
        full = native(src)
        causal = native(src, mask=nn.Transformer.generate_square_subsequent_mask(5), is_causal=True)
    assert torch.equal(hinted, full)
    assert (hinted - causal).abs().max() > 1e-2

    cfg = EncoderConfig(vocab_size=20, d_model=8, n_heads=2, d_ff=16, n_layers=1, dropout=0.0)
    weights = random_weights(cfg, 0)
    ids, _, _ = make_inputs(cfg, 1, 5)
    tm, jm = build_pair(cfg, weights)
    expected = reference.forward(weights, cfg, ids, is_causal=True).last_hidden_state
    assert_close(to_numpy(tm(ids, is_causal=True)), expected, tolerance("float32"), "torch")
    assert_close(to_numpy(jm(ids, is_causal=True)), expected, tolerance("float32"), "jax")


def test_flax_embed_computes_in_its_param_dtype_so_dtype_is_passed_at_construction():
    """nnx.Embed computes in ``param_dtype`` whatever its table holds: casting a float32 model's
    state to bfloat16 afterwards would leave float32 activations. Both constructors take dtype."""
    embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    embed.embedding = nnx.Param(embed.embedding[...].astype(jnp.bfloat16))
    assert embed(jnp.array([1])).dtype == jnp.float32
    cfg = EncoderConfig(vocab_size=10, d_model=8, n_heads=2, dropout=0.0)
    with jax.numpy_dtype_promotion("standard"):
        jm = jax_impl.TransformerEncoder(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        assert jm(np.array([[1, 2]])).dtype == jnp.bfloat16
    assert (
        torch_impl.TransformerEncoder(cfg, dtype=torch.bfloat16)(np.array([[1, 2]])).dtype
        == torch.bfloat16
    )
