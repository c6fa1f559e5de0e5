"""One set of helpers for the whole suite: build both models from the same weights, run
them, and turn their outputs into NumPy. Tests compare with ``shared.tolerances`` only."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl
from shared import EncoderConfig, reference

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
JAX_DTYPES = {"float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


@contextlib.contextmanager
def jax_dtype_scope(dtype: str):
    """float64 needs x64 on; Flax's LayerNorm promotes its statistics with
    ``jnp.promote_types(dtype, float32)``, which strict promotion rejects for float64 and
    bfloat16, so those dtypes run under standard promotion (float32 stays strict)."""
    if dtype == "float32":
        yield
        return
    with jax.enable_x64(dtype == "float64"), jax.numpy_dtype_promotion("standard"):
        yield


def make_inputs(cfg: EncoderConfig, batch: int, seq_len: int, *, seed: int = 0, pad: str = "none"):
    """Random ``(input_ids, attention_mask, token_type_ids)`` as NumPy arrays.

    ``pad``: "none" (mask None), "some" (sequences of different lengths) or "all_one"
    (like "some", and the last sequence is padding only).
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (batch, seq_len))
    types = rng.integers(0, cfg.type_vocab_size, (batch, seq_len)) if cfg.type_vocab_size else None
    mask = None
    if pad != "none":
        lengths = rng.integers(1, seq_len + 1, batch)
        lengths[0] = seq_len
        mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        if pad == "all_one":
            mask[-1] = 0
    return ids, mask, types


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    x = jnp.asarray(x)
    return np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)


def build_pair(
    cfg: EncoderConfig,
    weights,
    *,
    dtype: str = "float32",
    backend: str = "math",
    torch_device: torch.device | str = "cpu",
):
    """Both models in eval mode, holding the same format-v1 ``weights``."""
    tm = torch_impl.from_weights(weights, cfg, backend=backend, dtype=TORCH_DTYPES[dtype])
    tm = tm.to(torch_device)
    with jax_dtype_scope(dtype):
        jm = jax_impl.from_weights(weights, cfg, backend=backend, dtype=JAX_DTYPES[dtype])
    return tm, jm


def run_torch(model, ids, mask=None, types=None, **kwargs):
    device = next(model.parameters()).device

    def t(a):
        return None if a is None else torch.as_tensor(a, device=device)

    with torch.no_grad():
        return model(t(ids), t(mask), t(types), **kwargs)


def run_jax(model, ids, mask=None, types=None, *, dtype: str = "float32", **kwargs):
    with jax_dtype_scope(dtype):
        return model(ids, mask, types, **kwargs)


def random_weights(cfg: EncoderConfig, seed: int = 0):
    return reference.init_weights(cfg, seed)


# --- forward + backward through the stack, with a general mask ---------------------------
#
# The grid tests run embeddings -> encoder stack with a general boolean mask (B|1, H|1, T, T),
# so that every mask kind, including custom per-head masks, goes through the same path. The
# loss is <h, probe> for a fixed random probe, so every parameter gets a non-trivial gradient.
# The embedding output gets ``+ offset`` (zeros) so that d loss / d embeddings is d loss / d offset.


def torch_forward_backward(
    model, ids, types, mask4d, probe, *, attention: bool = True, masks: dict | None = None
) -> dict:
    """Outputs, per-layer states, attention weights (if ``attention``; asking for them runs the
    math path even on the fused backend) and gradients of ``<h, probe>``, as NumPy.
    ``masks``: extra encoder keywords (``key_padding_mask`` as NumPy, ``is_causal``)."""
    device = next(model.parameters()).device
    dtype = model.embeddings.token.weight.dtype

    def t(a, dt=None):
        return None if a is None else torch.as_tensor(a, device=device, dtype=dt)

    model.zero_grad(set_to_none=True)
    offset = torch.zeros(*ids.shape, model.config.d_model, dtype=dtype, device=device)
    offset.requires_grad_(True)
    x = model.embeddings(t(ids), t(types)) + offset  # (B, T, D)
    extra = dict(masks or {})
    if extra.get("key_padding_mask") is not None:
        extra["key_padding_mask"] = t(extra["key_padding_mask"], torch.bool)
    h, attn, hidden = model.encoder(
        x, t(mask4d), return_attention=attention, return_hidden_states=True, **extra
    )
    (h * t(probe, dtype)).sum().backward()
    grads = {
        name: to_numpy(p.grad.T if layout == "transpose" else p.grad)
        for name, p, layout in torch_impl.parameter_table(model)
    }
    return {
        "h": to_numpy(h),
        "attentions": [to_numpy(a) for a in attn or []],
        "hidden_states": [to_numpy(a) for a in hidden],
        "grads": grads,
        "grad_embeddings": to_numpy(offset.grad),
    }


def jax_forward_backward(
    model,
    ids,
    types,
    mask4d,
    probe,
    *,
    dtype: str = "float32",
    attention: bool = True,
    masks: dict | None = None,
) -> dict:
    """The JAX twin of :func:`torch_forward_backward`."""
    from flax import nnx

    with jax_dtype_scope(dtype):
        jdtype = JAX_DTYPES[dtype]
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        mask = None if mask4d is None else jnp.asarray(mask4d)
        probe = jnp.asarray(probe, dtype=jdtype)
        extra = dict(masks or {})
        if extra.get("key_padding_mask") is not None:
            extra["key_padding_mask"] = jnp.asarray(extra["key_padding_mask"], dtype=bool)

        def loss(params, offset):
            m = nnx.merge(graphdef, params, rest)
            x = m.embeddings(jnp.asarray(ids), None if types is None else jnp.asarray(types))
            h, attn, hidden = m.encoder(
                x + offset, mask, return_attention=attention, return_hidden_states=True, **extra
            )
            return (h * probe).sum(), (h, attn, hidden)

        offset = jnp.zeros((*ids.shape, model.config.d_model), dtype=jdtype)
        (g_params, g_offset), (h, attn, hidden) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            params, offset
        )
        grads = jax_impl.export_weights(nnx.merge(graphdef, g_params, rest))
        return {
            "h": to_numpy(h),
            "attentions": [to_numpy(a) for a in attn or []],
            "hidden_states": [to_numpy(a) for a in hidden],
            "grads": grads,
            "grad_embeddings": to_numpy(g_offset),
        }
