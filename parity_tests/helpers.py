"""One set of helpers for the whole suite: build both models from the same weights, run
them, and turn their outputs into NumPy. Tests compare with ``shared.tolerances`` only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl
from shared import EncoderConfig, layouts, reference

ROOT = Path(__file__).resolve().parent.parent

TORCH_DTYPES = torch_impl.DTYPES
JAX_DTYPES = jax_impl.DTYPES


TINY = dict(vocab_size=32, d_model=16, n_heads=4, d_ff=32, n_layers=2, max_len=16, dropout=0.0)


def tiny_config(**fields) -> EncoderConfig:
    """A tiny config for tests (D=16, 4 heads, 2 layers, no dropout), ``fields`` changed."""
    return EncoderConfig(**(TINY | fields))


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
    """A tensor or array of either framework as NumPy (bfloat16 as float32)."""
    if isinstance(x, torch.Tensor):
        return torch_impl.to_numpy(x)
    return jax_impl.to_numpy(jnp.asarray(x))


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


# --- forward + backward through the model's call, with a general mask ------------------
#
# The grid tests call the model as users do, with a general boolean ``mask=`` (B|1, H|1, T, T),
# so that every mask kind, including custom per-head masks, goes through the same path. The
# loss is <h, probe> for a fixed random probe, so every parameter gets a non-trivial gradient.
# The embeddings' output gets ``+ offset`` (zeros) so that d loss / d embeddings is
# d loss / d offset: a forward hook in PyTorch, a wrapped front end in JAX.


def _call_masks(masks: dict | None) -> dict:
    """``key_padding_mask`` (B, T) and ``is_causal`` as the model's call takes them."""
    masks = dict(masks or {})
    return {
        "attention_mask": masks.get("key_padding_mask"),
        "is_causal": masks.get("is_causal", False),
    }


def torch_forward_backward(
    model, ids, types, mask4d, probe, *, attention: bool = True, masks: dict | None = None
) -> dict:
    """Outputs, per-layer states, attention weights (if ``attention``; asking for them runs the
    math path even on the fused backend) and gradients of ``<h, probe>``, as NumPy.
    ``masks``: ``key_padding_mask`` (B, T) as NumPy, ``is_causal``."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype

    def t(a, dt=None):
        return None if a is None else torch.as_tensor(a, device=device, dtype=dt)

    model.zero_grad(set_to_none=True)
    offset = torch.zeros(*ids.shape, model.config.d_model, dtype=dtype, device=device)
    offset.requires_grad_(True)
    shift = model.embeddings.register_forward_hook(lambda _, __, out: (out[0] + offset, out[1]))
    try:
        call = _call_masks(masks)
        h, *rest = model(
            t(ids),
            t(call["attention_mask"]),
            t(types),
            mask=t(mask4d),
            is_causal=call["is_causal"],
            return_attention=attention,
            return_hidden_states=True,
        )
    finally:
        shift.remove()
    attn, hidden = rest if attention else (None, rest[0])
    (h * t(probe, dtype)).sum().backward()
    params = dict(model.named_parameters())
    table = torch_impl.rows(model)
    grads = layouts.from_outside(table, {path: to_numpy(params[path].grad) for path, _, _ in table})
    return {
        "h": to_numpy(h),
        "attentions": [to_numpy(a) for a in attn or []],
        "hidden_states": [to_numpy(a) for a in hidden],
        "grads": grads,
        "grad_embeddings": to_numpy(offset.grad),
    }


class _Shifted:
    """A front end whose output ``x`` comes back as ``x + offset`` (the JAX twin of the hook)."""

    def __init__(self, embeddings, offset):
        self.embeddings, self.offset = embeddings, offset

    def __call__(self, *args, **kwargs):
        x, key_padding_mask = self.embeddings(*args, **kwargs)
        return x + self.offset, key_padding_mask

    def __getattr__(self, name):  # the front end's other methods (positions ...) as they are
        return getattr(self.embeddings, name)


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
        jdtype = jax_impl.DTYPES[dtype]
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        mask = None if mask4d is None else jnp.asarray(mask4d)
        probe = jnp.asarray(probe, dtype=jdtype)
        call = _call_masks(masks)

        def loss(params, offset):
            m = nnx.merge(graphdef, params, rest)
            m.embeddings = _Shifted(m.embeddings, offset)
            h, *outputs = m(
                jnp.asarray(ids),
                call["attention_mask"],
                None if types is None else jnp.asarray(types),
                mask=mask,
                is_causal=call["is_causal"],
                return_attention=attention,
                return_hidden_states=True,
            )
            attn, hidden = outputs if attention else (None, outputs[0])
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


def run_jax_cases(cases: str, *, devices: int = 4, env: dict | None = None, timeout: int = 600):
    """``pytest parity_tests/<cases>`` in a child process whose JAX sees ``devices`` host
    devices (JAX fixes its device count when it starts). ``env`` adds variables (where the
    child writes its outputs). Returns ``(return code, stdout + stderr)``."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "pytest", f"parity_tests/{cases}", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr
