"""Our attention and encoder against the frameworks' own modules, which nobody here wrote:
PyTorch's ``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` and Flax's
``nnx.MultiHeadAttention`` (and a stack of Flax's own modules, ``jax_impl.native``).

The same format-v1 weights go into both sides through ``torch_impl.native`` /
``jax_impl.native``; masks go through ``shared.masks`` only. Where the native modules behave
differently from ours (fully masked rows, PyTorch's inference fast path) the tests pin down
what the installed versions actually do, so that a change upstream shows up here.
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import torch_impl
from jax_impl import native as jax_native
from parity_tests.helpers import make_inputs, random_weights, to_numpy
from shared import EncoderConfig, masks
from shared.tolerances import assert_close, tolerance
from shared.weights import CheckpointError
from torch_impl import native as torch_native

NESTED_TENSOR_WARNING = "ignore:The PyTorch API of nested tensors:UserWarning"

# Stacks: every knob the native modules take from the config (activation, eps, norm
# placement, final norm, head count, dropout that eval mode must switch off).
CONFIGS = {
    "post_relu_h4": EncoderConfig(
        vocab_size=50, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0, activation="relu"
    ),
    "post_gelu_eps1e-12_dropout_h2": EncoderConfig(
        vocab_size=50,
        d_model=32,
        n_heads=2,
        d_ff=48,
        n_layers=2,
        dropout=0.1,
        activation="gelu",
        layer_norm_eps=1e-12,
    ),
    "post_gelu_final_norm_h4": EncoderConfig(
        vocab_size=50, d_model=24, n_heads=4, d_ff=40, n_layers=1, dropout=0.0, final_norm=True
    ),
    "post_gelu_h3_odd_heads": EncoderConfig(
        vocab_size=50, d_model=24, n_heads=3, d_ff=40, n_layers=2, dropout=0.0, activation="gelu"
    ),
    "pre_gelu_tanh_final_norm_h4": EncoderConfig(
        vocab_size=50,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_layers=3,
        dropout=0.0,
        activation="gelu_tanh",
        norm_first=True,
        final_norm=True,
        layer_norm_eps=1e-6,
    ),
}
# Attention alone: (d_model, n_heads), one head included.
ATTENTION_SHAPES = {"d32_h4": (32, 4), "d24_h3": (24, 3), "d16_h1": (16, 1)}
MASKS = ("none", "padding", "causal", "padding_causal")
BATCH, SEQ_LEN = 3, 7


def attention_config(d_model: int, n_heads: int) -> EncoderConfig:
    return EncoderConfig(vocab_size=50, d_model=d_model, n_heads=n_heads, n_layers=1, dropout=0.0)


def random_x(cfg: EncoderConfig, seed: int, batch: int = BATCH, seq_len: int = SEQ_LEN):
    """(B, T, D) float32 inputs for a stack or an attention block."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, seq_len, cfg.d_model)).astype(np.float32)


def make_masks(cfg: EncoderConfig, kind: str, seed: int):
    """One mask, three conventions.

    Returns ``(real, ours, torch_kwargs)``: ``real`` (B, T) bool, True at real tokens; ``ours``
    (B|1, 1, T, S) bool, True = may attend, or None; ``torch_kwargs`` PyTorch's
    ``key_padding_mask`` and ``attn_mask`` (True = ignore, or float -inf = ignore).
    """
    _, attention_mask, _ = make_inputs(
        cfg, BATCH, SEQ_LEN, seed=seed, pad="some" if "padding" in kind else "none"
    )
    ours = masks.make_attention_mask(attention_mask, is_causal="causal" in kind, q_len=SEQ_LEN)
    key_padding_mask = attn_mask = None
    if kind == "padding":
        key_padding_mask = torch.from_numpy(masks.to_key_padding_mask(attention_mask))
    if "causal" in kind:
        attn_mask = torch.from_numpy(masks.to_additive(masks.causal(SEQ_LEN))[0, 0])  # (T, S)
    if kind == "padding_causal":
        # Both float: PyTorch deprecates mixing a boolean and a float mask.
        key_padding_mask = torch.from_numpy(masks.to_additive(attention_mask.astype(bool)))
    real = np.ones((BATCH, SEQ_LEN), bool) if attention_mask is None else attention_mask == 1
    return real, ours, {"key_padding_mask": key_padding_mask, "attn_mask": attn_mask}


def on(device: torch.device, kwargs: dict) -> dict:
    return {k: None if v is None else v.to(device) for k, v in kwargs.items()}


@contextlib.contextmanager
def torch_fast_path(enabled: bool):
    """Turn PyTorch's native-MHA / TransformerEncoder inference fast path on or off."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


# --- multi-head attention, per head -------------------------------------------------------


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_torch_attention_equals_nn_multihead_attention_per_head(shape, kind, device, torch_device):
    cfg = attention_config(*shape)
    w = random_weights(cfg, seed=11)
    ours = torch_impl.from_weights(w, cfg).encoder.layers[0].attention.to(torch_device)
    native = torch_native.native_attention(cfg.d_model, cfg.n_heads).to(torch_device).eval()
    torch_native.import_attention(native, w, prefix="layers.0.attention.")
    _, mask, torch_masks = make_masks(cfg, kind, seed=12)
    x = torch.from_numpy(random_x(cfg, seed=13)).to(torch_device)

    with torch.no_grad():
        mask = None if mask is None else torch.from_numpy(mask).to(torch_device)
        out, weights = ours(x, mask=mask, return_attention=True)
        out_n, weights_n = torch_native.attention_with_weights(
            native, x, **on(torch_device, torch_masks)
        )
    tol = tolerance("float32", device)
    assert weights_n.shape == (BATCH, cfg.n_heads, SEQ_LEN, SEQ_LEN)
    assert_close(to_numpy(out), to_numpy(out_n), tol, "output")
    assert_close(to_numpy(weights), to_numpy(weights_n), tol, "weights per head")


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_jax_attention_equals_nnx_multi_head_attention_per_head(shape, kind, device):
    cfg = attention_config(*shape)
    w = random_weights(cfg, seed=11)
    ours = jax_impl.from_weights(w, cfg).encoder.layers[0].attention
    native = jax_native.native_attention(cfg.d_model, cfg.n_heads, rngs=nnx.Rngs(0))
    jax_native.import_attention(native, w, prefix="layers.0.attention.")
    _, mask, _ = make_masks(cfg, kind, seed=12)  # Flax's convention is ours: no conversion
    x = jnp.asarray(random_x(cfg, seed=13))

    mask = None if mask is None else jnp.asarray(mask)
    out, weights = ours(x, mask=mask, return_attention=True)
    out_n, weights_n = jax_native.attention_with_weights(native, x, mask=mask)
    tol = tolerance("float32", device)
    assert weights_n.shape == (BATCH, cfg.n_heads, SEQ_LEN, SEQ_LEN)
    assert_close(to_numpy(out), to_numpy(out_n), tol, "output")
    assert_close(to_numpy(weights), to_numpy(weights_n), tol, "weights per head")
    # Flax's fused path (no sown weights) gives the same output as its weights path.
    assert_close(to_numpy(native(x, mask=mask)), to_numpy(out_n), tol, "output, fused path")


# --- encoder stacks ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_torch_encoder_equals_nn_transformer_encoder_with_fast_path_off(
    cfg, kind, device, torch_device
):
    w = random_weights(cfg, seed=21)
    ours = torch_impl.from_weights(w, cfg).encoder.to(torch_device)
    native = torch_native.import_encoder(torch_native.native_encoder(cfg), w)
    native = native.to(torch_device).eval()
    _, mask, torch_masks = make_masks(cfg, kind, seed=22)
    torch_masks = on(torch_device, torch_masks)
    x = torch.from_numpy(random_x(cfg, seed=23)).to(torch_device)

    with torch.no_grad(), torch_fast_path(False):
        mask = None if mask is None else torch.from_numpy(mask).to(torch_device)
        h, _, _ = ours(x, mask)
        h_n = native(
            x, mask=torch_masks["attn_mask"], src_key_padding_mask=torch_masks["key_padding_mask"]
        )
    # Every position, padded ones included: the slow path computes them as we do.
    assert_close(to_numpy(h), to_numpy(h_n), tolerance("float32", device), "hidden states")


@pytest.mark.filterwarnings(NESTED_TENSOR_WARNING)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_torch_encoder_equals_nn_transformer_encoder_fast_path_at_real_positions(
    cfg, device, torch_device
):
    """eval + no_grad + a padding mask: PyTorch packs the batch into a nested tensor
    (pytorch#86120, #97111). Real positions agree with ours; padded positions come back as
    exact 0.0 (then through ``norm``, if any: LayerNorm of a zero vector is its bias)."""
    w = random_weights(cfg, seed=31)
    ours = torch_impl.from_weights(w, cfg).encoder.to(torch_device)
    native = torch_native.import_encoder(torch_native.native_encoder(cfg), w)
    native = native.to(torch_device).eval()
    real, mask, torch_masks = make_masks(cfg, "padding", seed=32)
    assert not real.all(), "the test needs padding"
    x = torch.from_numpy(random_x(cfg, seed=33)).to(torch_device)

    with torch.no_grad(), torch_fast_path(True):
        h, _, _ = ours(x, torch.from_numpy(mask).to(torch_device))
        h_n = native(x, src_key_padding_mask=torch_masks["key_padding_mask"].to(torch_device))
    h, h_n = to_numpy(h), to_numpy(h_n)
    assert native.use_nested_tensor is torch_native.fast_path_eligible(cfg)
    assert_close(h[real], h_n[real], tolerance("float32", device), "real positions")
    if native.use_nested_tensor:
        padded = np.zeros(cfg.d_model, np.float32)
        if cfg.final_norm:
            padded = to_numpy(native.norm.bias)
        np.testing.assert_array_equal(h_n[~real], np.broadcast_to(padded, h_n[~real].shape))
    else:  # no nested tensors: padded positions are computed, as ours are
        assert_close(h[~real], h_n[~real], tolerance("float32", device), "padded positions")


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_jax_encoder_equals_flax_native_stack(cfg, kind, device):
    w = random_weights(cfg, seed=41)
    ours = jax_impl.from_weights(w, cfg).encoder
    native = jax_native.import_encoder(jax_native.native_encoder(cfg, rngs=nnx.Rngs(0)), w)
    native.eval()
    _, mask, _ = make_masks(cfg, kind, seed=42)
    x = jnp.asarray(random_x(cfg, seed=43))

    mask = None if mask is None else jnp.asarray(mask)
    h, _, _ = ours(x, mask)
    h_n = native(x, mask)
    assert_close(to_numpy(h), to_numpy(h_n), tolerance("float32", device), "hidden states")


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_native_modules_take_eps_activation_and_norm_placement_from_config(cfg):
    """Attributes, checked directly: a wrong eps (1e-5 for 1e-12) moves outputs by only
    ~1e-6, below what a parity test of unit-scale outputs can see."""
    t = torch_native.native_encoder(cfg)
    j = jax_native.native_encoder(cfg, rngs=nnx.Rngs(0))
    assert len(t.layers) == len(j.layers) == cfg.n_layers
    assert (t.norm is not None) == (j.norm is not None) == cfg.final_norm
    norms_t = [n for layer in t.layers for n in (layer.norm1, layer.norm2)]
    norms_j = [n for layer in j.layers for n in (layer.norm1, layer.norm2)]
    if cfg.final_norm:
        norms_t.append(t.norm)
        norms_j.append(j.norm)
    assert all(n.eps == cfg.layer_norm_eps for n in norms_t)
    assert all(n.epsilon == cfg.layer_norm_eps and not n.use_fast_variance for n in norms_j)
    for layer_t, layer_j in zip(t.layers, j.layers, strict=True):
        assert layer_t.norm_first == layer_j.norm_first == cfg.norm_first
        assert layer_t.self_attn.batch_first
        assert layer_t.self_attn.num_heads == layer_j.self_attn.num_heads == cfg.n_heads
        assert layer_j.self_attn.decode is False
        assert layer_t.linear1.out_features == layer_j.linear1.out_features == cfg.d_ff
    z = np.linspace(-3, 3, 13, dtype=np.float32)
    act_t = to_numpy(t.layers[0].activation(torch.from_numpy(z)))
    act_j = to_numpy(j.layers[0].activation(jnp.asarray(z)))
    assert_close(act_j, act_t, tolerance("float32"), f"activation {cfg.activation}")
    # gelu and its tanh approximation differ by up to ~5e-4 here: the right one was chosen
    exact = to_numpy(torch.nn.functional.gelu(torch.from_numpy(z)))
    assert (np.abs(act_t - exact).max() == 0.0) == (cfg.activation == "gelu")


# --- fully masked query rows: what each native module does -----------------------------------
# Installed versions: torch 2.13, flax 0.12.8 / jax 0.10.2. A query row whose keys are all
# masked has no softmax; the paper leaves it undefined. Ours: zero weights, zero output
# (so the block returns the output projection's bias), finite gradients.


def _fully_masked_setup(d_model: int = 16, n_heads: int = 2, seed: int = 51):
    """Weights, x (2, 5, D) and a (2, 5) mask whose second sequence is all padding."""
    cfg = attention_config(d_model, n_heads)
    w = random_weights(cfg, seed=seed)
    x = random_x(cfg, seed=seed + 1, batch=2, seq_len=5)
    attention_mask = np.ones((2, 5), np.int64)
    attention_mask[1] = 0
    return cfg, w, x, attention_mask


def test_fully_masked_row_ours_gives_zero_weights_in_both_frameworks():
    cfg, w, x, attention_mask = _fully_masked_setup()
    mask = masks.padding(attention_mask)
    out_bias = w["layers.0.attention.out.bias"]
    with torch.no_grad():
        t = torch_impl.from_weights(w, cfg).encoder.layers[0].attention
        out_t, weights_t = t(
            torch.from_numpy(x), mask=torch.from_numpy(mask), return_attention=True
        )
    j = jax_impl.from_weights(w, cfg).encoder.layers[0].attention
    out_j, weights_j = j(jnp.asarray(x), mask=jnp.asarray(mask), return_attention=True)
    for out, weights in ((out_t, weights_t), (out_j, weights_j)):
        np.testing.assert_array_equal(to_numpy(weights)[1], 0.0)
        np.testing.assert_array_equal(to_numpy(out)[1], np.broadcast_to(out_bias, (5, cfg.d_model)))


def test_fully_masked_row_nn_multihead_attention_with_weights_gives_nan():
    """need_weights=True runs PyTorch's explicit softmax over an all -inf row: NaN in the
    weights and the output (pytorch#41508, open since 2020)."""
    cfg, w, x, attention_mask = _fully_masked_setup()
    native = torch_native.import_attention(
        torch_native.native_attention(cfg.d_model, cfg.n_heads), w, prefix="layers.0.attention."
    ).eval()
    with torch.no_grad():
        out, weights = torch_native.attention_with_weights(
            native,
            torch.from_numpy(x),
            key_padding_mask=torch.from_numpy(masks.to_key_padding_mask(attention_mask)),
        )
    out, weights = to_numpy(out), to_numpy(weights)
    assert np.isnan(out[1]).all() and np.isnan(weights[1]).all()
    assert np.isfinite(out[0]).all() and np.isfinite(weights[0]).all()


def test_fully_masked_row_nn_multihead_attention_fast_path_gives_nan():
    """need_weights=False in eval under no_grad (even head count) takes the native MHA fast
    path: NaN as well."""
    cfg, w, x, attention_mask = _fully_masked_setup()
    native = torch_native.import_attention(
        torch_native.native_attention(cfg.d_model, cfg.n_heads), w, prefix="layers.0.attention."
    ).eval()
    xt = torch.from_numpy(x)
    kpm = torch.from_numpy(masks.to_key_padding_mask(attention_mask))
    with torch.no_grad(), torch_fast_path(True):
        out, _ = native(xt, xt, xt, key_padding_mask=kpm, need_weights=False)
    out = to_numpy(out)
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()


def test_fully_masked_row_nn_multihead_attention_sdpa_path_gives_zeros():
    """need_weights=False off the fast path goes through F.scaled_dot_product_attention,
    whose safe softmax returns zeros for all -inf rows (PR #133882): the block returns the
    output bias, exactly as ours."""
    cfg, w, x, attention_mask = _fully_masked_setup()
    native = torch_native.import_attention(
        torch_native.native_attention(cfg.d_model, cfg.n_heads), w, prefix="layers.0.attention."
    ).eval()
    xt = torch.from_numpy(x)
    kpm = torch.from_numpy(masks.to_key_padding_mask(attention_mask))
    with torch.no_grad(), torch_fast_path(False):
        out, _ = native(xt, xt, xt, key_padding_mask=kpm, need_weights=False)
    out_bias = w["layers.0.attention.out.bias"]
    np.testing.assert_array_equal(to_numpy(out)[1], np.broadcast_to(out_bias, (5, cfg.d_model)))


def test_fully_masked_row_nnx_multi_head_attention_averages_the_values(device):
    """Flax fills masked scores with finfo.min, not -inf: in an all-masked row every key
    gets weight 1/S, and the output is the mean of V through the output projection. The
    same on its weights path (sow_weights) and its jax.nn.dot_product_attention path."""
    cfg, w, x, attention_mask = _fully_masked_setup()
    native = jax_native.import_attention(
        jax_native.native_attention(cfg.d_model, cfg.n_heads, rngs=nnx.Rngs(0)),
        w,
        prefix="layers.0.attention.",
    )
    mask = jnp.asarray(masks.padding(attention_mask))
    out, weights = jax_native.attention_with_weights(native, jnp.asarray(x), mask=mask)
    out_fused = native(jnp.asarray(x), mask=mask)

    a = {k.removeprefix("layers.0.attention."): v for k, v in w.items()}
    v = x[1].astype(np.float64) @ a["v.weight"] + a["v.bias"]  # (S, D), all heads
    expected = v.mean(axis=0) @ a["out.weight"] + a["out.bias"]  # (D,)
    tol = tolerance("float32", device)
    assert_close(to_numpy(weights)[1], np.full((cfg.n_heads, 5, 5), 1 / 5), tol, "weights")
    for name, o in (("weights path", out), ("fused path", out_fused)):
        assert_close(to_numpy(o)[1], np.broadcast_to(expected, (5, cfg.d_model)), tol, name)


@pytest.mark.filterwarnings(NESTED_TENSOR_WARNING)
def test_fully_padded_sequence_nn_transformer_encoder(device):
    """The whole stack, one sequence all padding: the fast path returns exact 0.0 for it
    (an empty nested-tensor entry, padded back with 0.0); the slow path goes through SDPA's
    safe softmax and computes it exactly as ours does."""
    cfg = CONFIGS["post_relu_h4"]
    assert torch_native.fast_path_eligible(cfg)
    w = random_weights(cfg, seed=61)
    x = torch.from_numpy(random_x(cfg, seed=62, batch=2, seq_len=5))
    attention_mask = np.ones((2, 5), np.int64)
    attention_mask[1] = 0
    ours = torch_impl.from_weights(w, cfg).encoder
    native = torch_native.import_encoder(torch_native.native_encoder(cfg), w).eval()
    kpm = torch.from_numpy(masks.to_key_padding_mask(attention_mask))
    with torch.no_grad():
        h, _, _ = ours(x, torch.from_numpy(masks.padding(attention_mask)))
        with torch_fast_path(True):
            fast = native(x, src_key_padding_mask=kpm)
        with torch_fast_path(False):
            slow = native(x, src_key_padding_mask=kpm)
    np.testing.assert_array_equal(to_numpy(fast)[1], 0.0)
    assert np.isfinite(to_numpy(h)).all()
    assert_close(to_numpy(h), to_numpy(slow), tolerance("float32", device), "slow path")


# --- weight mapping -------------------------------------------------------------------------

FRAMEWORKS = ("torch", "jax")


def build_native(framework: str, cfg: EncoderConfig):
    if framework == "torch":
        return torch_native, torch_native.native_encoder(cfg)
    return jax_native, jax_native.native_encoder(cfg, rngs=nnx.Rngs(0))


def native_parameter_names(framework: str, module) -> list[str]:
    if framework == "torch":
        return [name for name, _ in module.named_parameters()]
    return [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(module)
        if isinstance(node, nnx.Param)
    ]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_weight_table_covers_every_native_parameter_once(cfg, framework):
    mod, native = build_native(framework, cfg)
    table = mod.encoder_table(cfg.n_layers, final_norm=cfg.final_norm)
    native_names = [row[0] for row in table]
    ours = [name for row in table for name in row[1]]
    assert sorted(native_names) == sorted(native_parameter_names(framework, native))
    layer_part = {k for k in random_weights(cfg) if k.startswith(("layers.", "final_norm."))}
    assert sorted(ours) == sorted(layer_part)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_weights_round_trip_through_native_encoder_bit_exact(cfg, framework):
    mod, native = build_native(framework, cfg)
    w = random_weights(cfg, seed=71)
    back = mod.export_encoder(mod.import_encoder(native, w))  # the embeddings are not read
    assert sorted(back) == sorted(k for k in w if not k.startswith("embeddings."))
    for name, array in back.items():
        assert array.dtype == w[name].dtype, name
        np.testing.assert_array_equal(array, w[name], err_msg=name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_weights_round_trip_through_native_attention_bit_exact(shape, framework):
    cfg = attention_config(*shape)
    w = random_weights(cfg, seed=72)
    prefix = "layers.0.attention."
    if framework == "torch":
        mod, native = torch_native, torch_native.native_attention(*shape)
    else:
        mod, native = jax_native, jax_native.native_attention(*shape, rngs=nnx.Rngs(0))
    back = mod.export_attention(mod.import_attention(native, w, prefix=prefix), prefix=prefix)
    assert sorted(back) == sorted(k for k in w if k.startswith(prefix))
    for name, array in back.items():
        np.testing.assert_array_equal(array, w[name], err_msg=name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_exported_weights_are_copies_not_views_of_the_parameters(framework):
    cfg = CONFIGS["post_relu_h4"]
    mod, native = build_native(framework, cfg)
    w = random_weights(cfg, seed=73)
    back = mod.export_encoder(mod.import_encoder(native, w))
    mod.import_encoder(native, {k: v + 1.0 for k, v in w.items()})
    for name, array in back.items():
        np.testing.assert_array_equal(array, w[name], err_msg=name)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_native_import_names_a_missing_or_misshaped_tensor(framework):
    cfg = CONFIGS["post_relu_h4"]
    mod, native = build_native(framework, cfg)
    w = random_weights(cfg, seed=74)
    missing = {k: v for k, v in w.items() if k != "layers.1.attention.k.weight"}
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers\.1\.attention\.k\.weight'"):
        mod.import_encoder(native, missing)
    wrong = w | {"layers.0.ffn.in.weight": w["layers.0.ffn.in.weight"].T}  # (F, D), not (D, F)
    with pytest.raises(
        CheckpointError, match=r"'layers\.0\.ffn\.in\.weight': expected shape \(32, 64\)"
    ):
        mod.import_encoder(native, wrong)
