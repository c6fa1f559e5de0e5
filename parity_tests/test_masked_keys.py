"""What a masked key may hold: anything. Keys that no query may attend to are never read.

On every backend of both frameworks (math, fused, flash, and the math path that returns
the weights), a NaN, +Inf or -Inf in the K or V rows of such keys changes neither the
output nor any gradient: the output is the float64 oracle's over the real keys, and the
gradients are those of the same call with those rows zeroed. Keys that some query may attend
to are not touched (a non-finite value there is the caller's).

Also here: what JAX's fused backend passes to cuDNN. JAX's cuDNN path checks a mask's query
axis before broadcasting it ("Bias must have same seq length as QKV, got 1 and T"); the
masks the project passes are run through JAX's own check on the CPU, and on a GPU whose
cuDNN takes bfloat16 the kernel itself runs (``benchmarks/gpu_check.sh`` runs that test).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.attention
import torch_impl.attention
from shared import reference
from shared.tolerances import assert_close, tolerance

B, H, T, S, HD = 2, 2, 3, 5, 4
KEY_PADDING = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)  # (B, S), True = real


def _per_query_mask() -> np.ndarray:
    """(B, H, T, S): key 4 hidden from every query; key 3 hidden from some queries only."""
    m = np.ones((B, H, T, S), bool)
    m[..., 4] = False
    m[:, :, 0, 3] = False  # key 3 is seen by queries 1 and 2: it stays visible
    m[1, 1, :, 0] = False  # key 0 of batch 1, head 1: hidden from all its queries
    return m


# name -> (general mask or None, key padding or None, is_causal)
MASKS = {
    "key_padding": (None, KEY_PADDING, False),
    "general_mask_columns": (KEY_PADDING[:, None, None, :], None, False),
    "general_mask_per_query": (_per_query_mask(), None, False),
    "causal_keys_past_the_last_query": (None, None, True),  # T=3 < S=5: keys 3, 4 hidden
    "padding_and_causal": (None, KEY_PADDING, True),
    "general_and_padding_and_causal": (_per_query_mask(), KEY_PADDING, True),
}


def _dense(mask, key_padding, is_causal) -> np.ndarray:
    """The (B, H, T, S) boolean mask the three combine to, in NumPy."""
    dense = np.ones((B, H, T, S), bool)
    if mask is not None:
        dense &= mask
    if key_padding is not None:
        dense &= key_padding[:, None, None, :]
    if is_causal:
        dense &= np.tril(np.ones((T, S), bool))
    return dense


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, HD))
    k = rng.standard_normal((B, H, S, HD))
    v = rng.standard_normal((B, H, S, HD))
    return q, k, v


def _backends(module) -> dict:
    """Every attention function a module of this project runs, by name."""
    out = dict(module.ATTENTION)
    out["flash_blocks_2"] = functools.partial(module.flash_attention, block_q=2, block_k=2)
    out["math_with_weights"] = lambda q, k, v, mask, *, key_padding_mask, is_causal: (
        module.scaled_dot_product_attention(
            q,
            k,
            v,
            module.combine_masks(mask, key_padding_mask, is_causal=is_causal, q=q, k=k),
        )[0]
    )
    return out


BACKENDS = sorted(_backends(torch_impl.attention))
# (value in the hidden K rows, value in the hidden V rows), one batch block each: any leak
# of either shows, and one call covers NaN, +Inf and -Inf in both
BAD = ((np.nan, np.nan), (np.inf, -np.inf), (-np.inf, np.inf))


def _tile(a: np.ndarray | None) -> np.ndarray | None:
    """Repeat a batch-sized array once per entry of :data:`BAD` along the batch axis."""
    if a is None or a.shape[0] != B:
        return a
    return np.concatenate([a] * len(BAD))


def _run(fw: str, backend: str, q, k, v, mask, key_padding, is_causal, probe):
    """(output, dq, dk, dv) of loss = <output, probe>, all float32, as NumPy."""
    if fw == "torch":
        attend = _backends(torch_impl.attention)[backend]
        q, k, v = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (q, k, v))
        out = attend(
            q,
            k,
            v,
            None if mask is None else torch.as_tensor(mask),
            key_padding_mask=None if key_padding is None else torch.as_tensor(key_padding),
            is_causal=is_causal,
        )
        (out * torch.as_tensor(probe, dtype=torch.float32)).sum().backward()
        return tuple(t.detach().numpy() for t in (out, q.grad, k.grad, v.grad))
    attend = _backends(jax_impl.attention)[backend]
    m = None if mask is None else jnp.asarray(mask)
    kp = None if key_padding is None else jnp.asarray(key_padding)

    def loss(q, k, v):
        out = attend(q, k, v, m, key_padding_mask=kp, is_causal=is_causal)
        return (out * probe.astype(np.float32)).sum(), out

    q, k, v = (jnp.asarray(a, dtype=jnp.float32) for a in (q, k, v))
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return (np.asarray(out), *(np.asarray(g) for g in grads))


@pytest.mark.parametrize("masks", sorted(MASKS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_non_finite_values_in_masked_keys_change_nothing(fw, backend, masks):
    mask, key_padding, is_causal = MASKS[masks]
    dense = _dense(mask, key_padding, is_causal)
    hidden = ~dense.any(axis=2)  # (B, H, S): keys no query may attend to
    assert hidden.any() and not hidden.all()
    q, k, v = _inputs()
    clean_k, clean_v = (np.where(hidden[..., None], 0.0, a) for a in (k, v))
    expected = _tile(reference.scaled_dot_product_attention(q, clean_k, clean_v, dense)[0])
    probe = np.random.default_rng(1).standard_normal(expected.shape)

    q, k, v, clean_k, clean_v = (_tile(a) for a in (q, k, v, clean_k, clean_v))
    mask, key_padding = _tile(mask), _tile(key_padding)
    corrupt_k, corrupt_v = k.copy(), v.copy()
    for i, (bad_k, bad_v) in enumerate(BAD):
        corrupt_k[i * B : (i + 1) * B][hidden] = bad_k
        corrupt_v[i * B : (i + 1) * B][hidden] = bad_v
    out, *grads = _run(fw, backend, q, corrupt_k, corrupt_v, mask, key_padding, is_causal, probe)
    _, *clean_grads = _run(fw, backend, q, clean_k, clean_v, mask, key_padding, is_causal, probe)

    tol = tolerance("float32", "cpu")
    assert_close(out, expected, tol, f"{fw} {backend}: output vs the oracle over real keys")
    hidden = _tile(hidden)
    for name, g, g_clean in zip("qkv", grads, clean_grads, strict=True):
        assert np.isfinite(g).all(), f"{fw} {backend}: d{name} is not finite"
        assert_close(g, g_clean, tol, f"{fw} {backend}: d{name} vs the call with zeroed keys")
        if name != "q":
            assert np.all(g[hidden] == 0), f"{fw} {backend}: d{name} of a hidden key is not 0"


def test_the_filed_case_fused_pytorch_with_a_nan_padded_key():
    """q (1, 2, 3, 4), k, v (1, 2, 4, 4), key 3 padded and NaN: the attention over the three
    real keys, on PyTorch's fused path (NaN everywhere before) and every other backend."""
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 2, 3, 4))
    k, v = rng.standard_normal((2, 1, 2, 4, 4))
    expected = reference.scaled_dot_product_attention(q, k[:, :, :3], v[:, :, :3])[0]
    k[:, :, 3] = np.nan
    v[:, :, 3] = np.nan
    padding = np.array([[True, True, True, False]])
    tol = tolerance("float32", "cpu")
    for name, attend in torch_impl.attention.ATTENTION.items():
        args = (torch.tensor(a, dtype=torch.float32) for a in (q, k, v))
        out = attend(*args, key_padding_mask=torch.as_tensor(padding)).numpy()
        assert_close(out, expected, tol, f"torch {name}")
    for name, attend in jax_impl.attention.ATTENTION.items():
        args = (jnp.asarray(a, dtype=jnp.float32) for a in (q, k, v))
        out = np.asarray(attend(*args, key_padding_mask=jnp.asarray(padding)))
        assert_close(out, expected, tol, f"jax {name}")


@pytest.mark.parametrize("backend", ["math", "fused", "flash"])
def test_nan_inputs_at_padded_positions_leave_real_positions_alone(backend):
    """The case in a model: the input rows at padded positions are NaN (a corrupt embedding
    row). Real positions of both frameworks' attention get what clean inputs give."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, S, 8)).astype(np.float32)
    dirty = x.copy()
    dirty[~KEY_PADDING] = np.nan
    t_mha = torch_impl.attention.MultiHeadAttention(8, 2, backend=backend)
    j_mha = jax_impl.attention.MultiHeadAttention(8, 2, backend=backend, rngs=nnx.Rngs(0))
    tol = tolerance("float32", "cpu")
    with torch.no_grad():
        clean = t_mha(torch.as_tensor(x), key_padding_mask=torch.as_tensor(KEY_PADDING)).numpy()
        got = t_mha(torch.as_tensor(dirty), key_padding_mask=torch.as_tensor(KEY_PADDING)).numpy()
    assert_close(got[KEY_PADDING], clean[KEY_PADDING], tol, f"torch {backend}")
    clean = np.asarray(j_mha(jnp.asarray(x), key_padding_mask=jnp.asarray(KEY_PADDING)))
    got = np.asarray(j_mha(jnp.asarray(dirty), key_padding_mask=jnp.asarray(KEY_PADDING)))
    assert_close(got[KEY_PADDING], clean[KEY_PADDING], tol, f"jax {backend}")


# ---------------------------------------------------------------------------------------------
# What JAX's fused backend passes to cuDNN, checked by JAX's own cuDNN shape check

cudnn = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")


def _cudnn_checks(query, key, value, mask, q_seqlen=None, kv_seqlen=None) -> None:
    """What ``jax.nn.dot_product_attention(implementation="cudnn")`` checks in Python before
    it calls the kernel (JAX 0.10.2): the boolean mask becomes a bias, then ``check_layout``
    compares its query and key axes with Q's and K's (BTNH layout)."""
    bias = cudnn.combine_bias_and_mask(None, mask, query.dtype)
    cudnn.check_layout(
        query, key, value, bias, q_seqlen, kv_seqlen, None, None, None, None,
        cudnn.AttentionLayout.BTNH,
    )  # fmt: skip


def test_jax_cudnn_check_refuses_a_padding_mask_with_a_query_axis_of_1():
    """The check the filed GPU failure comes from, reproduced on the CPU: it is real."""
    x = jnp.zeros((B, T, H, HD), jnp.bfloat16)
    with pytest.raises(ValueError, match=f"Bias must have same seq length as QKV, got 1 and {T}"):
        _cudnn_checks(x, x, x, jnp.ones((B, 1, 1, T), bool))
    _cudnn_checks(x, x, x, jnp.ones((B, 1, T, T), bool))  # broadcast: accepted


CUDNN_MASKS = {
    **MASKS,
    "no_mask": (None, None, False),
    "a_row_of_padding_only": (None, np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool), False),
}


@pytest.mark.parametrize("masks", sorted(CUDNN_MASKS))
def test_jax_fused_passes_cudnn_masks_its_shape_check_accepts(masks, monkeypatch):
    """With the kernel choice forced to cuDNN, every call ``fused_attention`` makes to
    ``jax.nn.dot_product_attention`` passes JAX's cuDNN check, and (computed by XLA here)
    gives the math backend's numbers in bfloat16."""
    real = jax.nn.dot_product_attention
    calls = []

    def spy(query, key, value, bias=None, mask=None, *, implementation=None, **kwargs):
        calls.append(implementation)
        assert implementation == "cudnn"
        if mask is not None:
            _cudnn_checks(query, key, value, mask)
        return real(query, key, value, bias, mask, implementation="xla", **kwargs)

    monkeypatch.setattr(jax_impl.attention, "fused_kernel", lambda *args: "cudnn")
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    mask, key_padding, is_causal = CUDNN_MASKS[masks]
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _inputs(4))
    m = None if mask is None else jnp.asarray(mask)
    kp = None if key_padding is None else jnp.asarray(key_padding)
    with jax.numpy_dtype_promotion("standard"):
        out = jax_impl.attention.fused_attention(
            q, k, v, m, key_padding_mask=kp, is_causal=is_causal
        )
        expected = jax_impl.attention.math_attention(
            q, k, v, m, key_padding_mask=kp, is_causal=is_causal
        )
    assert calls == ["cudnn"]
    to32 = functools.partial(np.asarray, dtype=np.float32)
    assert_close(to32(out), to32(expected), tolerance("bfloat16", "cpu"), "fused (cudnn) vs math")


def test_fused_cudnn_on_a_gpu_runs_padding_masks(device):
    """On a GPU whose cuDNN takes bfloat16: the real kernel with a padding mask (the filed
    failure), padding + causal, and a row of padding only, against the math backend."""
    if device != "gpu":
        pytest.skip("needs --device gpu (benchmarks/gpu_check.sh runs it)")
    if jax_impl.attention.fused_kernel(jnp.bfloat16, 64) != "cudnn":
        pytest.skip("cuDNN fused attention refuses bfloat16 here: fused runs XLA")
    rng = np.random.default_rng(5)
    b, h, t, hd = 2, 4, 128, 64
    q, k, v = (jnp.asarray(rng.standard_normal((b, h, t, hd)), jnp.bfloat16) for _ in range(3))
    padding = np.ones((b, t), bool)
    padding[1, 100:] = False
    for kp, is_causal in ((padding, False), (padding, True), (np.zeros((b, t), bool), False)):
        with jax.numpy_dtype_promotion("standard"):
            args = dict(key_padding_mask=jnp.asarray(kp), is_causal=is_causal)
            out = jax_impl.attention.fused_attention(q, k, v, **args)
            expected = jax_impl.attention.math_attention(q, k, v, **args)
        to32 = functools.partial(np.asarray, dtype=np.float32)
        assert_close(to32(out), to32(expected), tolerance("bfloat16", device), "cudnn vs math")
