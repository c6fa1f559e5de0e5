"""A float64 NumPy oracle of the whole encoder, written from the paper, not from either framework.

Both implementations are tested against it. It reads format-v1 weights directly (linear
weights (in, out), so every projection is ``x @ W + b``), and is slow on purpose: plain
loops over layers, no fusion, every intermediate in float64.

Notation: B batch, T query length, S key length, D d_model, E embedding width, H heads,
G K/V heads (grouped-query attention), hd head_dim, F d_ff.

Absent tensors are absent terms: a config without biases (``attention_bias``, ``mlp_bias``,
``mlp_out_bias``, ``norm_bias``) has no bias tensors, and the oracle adds nothing there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from shared import masks
from shared.config import EncoderConfig
from shared.positional import apply_rope, sinusoidal

__all__ = [
    "Output",
    "activation",
    "forward",
    "init_weights",
    "layer_norm",
    "multi_head_attention",
    "norm",
    "rms_norm",
    "scaled_dot_product_attention",
]

_erf = np.vectorize(math.erf, otypes=[np.float64])


class Output(NamedTuple):
    last_hidden_state: np.ndarray  # (B, T, D), after final_norm if the config has one
    attentions: list[np.ndarray]  # per layer, (B, H, T, T)
    hidden_states: list[np.ndarray]  # n_layers + 1 arrays (B, T, D): embeddings, then each layer


def activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":  # exact: x * Phi(x)
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":  # Hendrycks & Gimpel's tanh approximation
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":  # x * sigmoid(x) (Elfwing et al. 2017; Swish with beta = 1)
        return x / (1.0 + np.exp(-x))
    raise ValueError(f"unknown activation {name!r}")


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, with the exact (two-pass) variance."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight.
    No mean is subtracted and there is no bias."""
    return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps) * weight


def norm(w: dict[str, np.ndarray], name: str, x: np.ndarray, cfg: EncoderConfig) -> np.ndarray:
    """The config's norm with weights ``w[name.weight]`` (and ``w[name.bias]`` if present):
    LayerNorm, with or without bias, or RMSNorm."""
    if cfg.norm == "rms_norm":
        return rms_norm(x, w[f"{name}.weight"], cfg.layer_norm_eps)
    bias = w.get(f"{name}.bias", 0.0)
    return layer_norm(x, w[f"{name}.weight"], bias, cfg.layer_norm_eps)


def scaled_dot_product_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """softmax(q k^T / sqrt(hd)) v for (B, H, T, hd) q and (B, H, S, hd) k, v.

    ``mask`` broadcasts to (B, H, T, S); True = may attend. A query row with no allowed key
    gets all-zero weights and a zero output. Returns ``(output (B, H, T, hd), weights (B, H, T, S))``.
    """
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is None:
        mask = np.ones(scores.shape, dtype=bool)
    mask = np.broadcast_to(mask, scores.shape)
    scores = np.where(mask, scores, -np.inf)
    row_max = np.max(scores, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # fully masked rows
    exp = np.where(mask, np.exp(scores - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    return weights @ v, weights


def multi_head_attention(
    w: dict[str, np.ndarray],
    x: np.ndarray,
    context: np.ndarray | None,
    n_heads: int,
    mask: np.ndarray | None,
    *,
    n_kv_heads: int | None = None,
    positions: np.ndarray | None = None,
    rope_theta: float | None = None,
    rope_interleaved: bool = False,
    qk_norm_eps: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-head attention with weights ``w[{q,k,v,out}.{weight,bias}]`` in format layout.

    Args:
        n_kv_heads: G K/V heads (grouped-query attention, Ainslie et al. 2023); query head h
            reads K/V head h // (H / G). Default H. The head width is q.weight's columns / H.
        positions, rope_theta: rotate q and k by RoPE (Su et al. 2021) at these (B|1, T)
            positions with this base, after the q/k norm.
        qk_norm_eps: RMSNorm q and k over each head with ``w[{q,k}_norm.weight]`` (Qwen3).
    """
    context = x if context is None else context
    b, t, _ = x.shape
    s = context.shape[1]
    n_kv_heads = n_kv_heads or n_heads
    hd = w["q.weight"].shape[1] // n_heads

    def heads(y: np.ndarray, n: int, h: int) -> np.ndarray:
        return y.reshape(b, n, h, hd).transpose(0, 2, 1, 3)  # (B, h, n, hd)

    q = heads(x @ w["q.weight"] + w.get("q.bias", 0.0), t, n_heads)
    k = heads(context @ w["k.weight"] + w.get("k.bias", 0.0), s, n_kv_heads)
    v = heads(context @ w["v.weight"] + w.get("v.bias", 0.0), s, n_kv_heads)
    if qk_norm_eps is not None:
        q = rms_norm(q, w["q_norm.weight"], qk_norm_eps)
        k = rms_norm(k, w["k_norm.weight"], qk_norm_eps)
    if rope_theta is not None:
        q = apply_rope(q, positions, rope_theta, interleaved=rope_interleaved)
        k = apply_rope(k, positions, rope_theta, interleaved=rope_interleaved)
    group = n_heads // n_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (B, H, S, hd)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, n_heads * hd)  # concatenate heads
    return out @ w["out.weight"] + w.get("out.bias", 0.0), weights


def _sub(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def forward(
    weights: dict[str, np.ndarray],
    cfg: EncoderConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    token_type_ids: np.ndarray | None = None,
    *,
    is_causal: bool = False,
    attn_mask: np.ndarray | None = None,
    pixel_values: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
) -> Output:
    """The encoder in float64, in eval mode (no dropout).

    A ViT (``cfg.image_size``) takes ``pixel_values`` (B, C, H, W) instead of ``input_ids``.

    ``attn_mask``: an optional general boolean mask (B|1, 1|H, T, T), True = may attend,
    combined (logical and) with ``attention_mask`` and ``is_causal``.
    ``position_ids``: (B|1, T) RoPE positions (``positional="rope"``); default 0..T-1.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    if cfg.image_size:
        x = _patch_embeddings(w, cfg, np.asarray(pixel_values, dtype=np.float64))
        return _stack(w, cfg, x, None, is_causal, attn_mask)
    input_ids = np.asarray(input_ids)
    x = w["embeddings.token.weight"][input_ids]  # (B, T, E), not scaled by sqrt(D)
    positions = None
    if cfg.positional == "rope":  # nothing added: q and k rotate in every layer
        t = input_ids.shape[1]
        positions = np.arange(t)[None] if position_ids is None else np.asarray(position_ids)
    elif cfg.position_pad_id is not None:  # RoBERTa: count the non-pad ids, pads at pad
        real = input_ids != cfg.position_pad_id
        pad_positions = np.cumsum(real, axis=1) * real + cfg.position_pad_id  # (B, T)
        x = x + w["embeddings.position.weight"][pad_positions]
    elif cfg.positional == "learned":
        x = x + w["embeddings.position.weight"][: input_ids.shape[1]]
    else:
        x = x + sinusoidal(input_ids.shape[1], cfg.embed_width)
    if cfg.type_vocab_size > 0:
        types = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
        x = x + w["embeddings.token_type.weight"][types]
    if cfg.embed_norm:
        x = norm(w, "embeddings.norm", x, cfg)
    if cfg.embed_dim:  # ELECTRA: E -> D
        x = x @ w["embeddings.project.weight"] + w["embeddings.project.bias"]
    return _stack(w, cfg, x, attention_mask, is_causal, attn_mask, positions)


def _patch_embeddings(
    w: dict[str, np.ndarray], cfg: EncoderConfig, pixels: np.ndarray
) -> np.ndarray:
    """ViT: (B, C, H, W) -> (B, 1 + N, D): the class token, then one token per patch, plus
    learned positions. Patch (i, j) is the vector of pixels[c, iP:(i+1)P, jP:(j+1)P]."""
    b, c, h, width = pixels.shape
    p = cfg.patch_size
    patches = pixels.reshape(b, c, h // p, p, width // p, p).transpose(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, (h // p) * (width // p), c * p * p)  # (B, N, C*P*P)
    x = patches @ w["embeddings.patch.weight"].reshape(c * p * p, -1) + w["embeddings.patch.bias"]
    cls = np.broadcast_to(w["embeddings.class_token"], (b, 1, x.shape[-1]))
    x = np.concatenate([cls, x], axis=1)  # (B, 1 + N, D)
    return x + w["embeddings.position.weight"]


def _stack(
    w: dict[str, np.ndarray],
    cfg: EncoderConfig,
    x: np.ndarray,
    attention_mask: np.ndarray | None,
    is_causal: bool,
    attn_mask: np.ndarray | None,
    positions: np.ndarray | None = None,
) -> Output:
    """The layers (and the final norm) over embeddings ``x`` (B, T, D); ``positions``
    (B|1, T) for RoPE."""
    t = x.shape[1]
    hidden_states, attentions = [x], []
    for i in range(cfg.n_layers):
        lw = _sub(w, f"layers.{i}")
        mask = masks.make_attention_mask(
            attention_mask, is_causal=is_causal or cfg.causal, q_len=t, window=cfg.layer_window(i)
        )
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask
        rope = cfg.layer_rope_theta(i) if positions is not None else None

        def attend(y: np.ndarray, lw: dict = lw, mask=mask, rope=rope) -> tuple:
            return multi_head_attention(
                _sub(lw, "attention"),
                y,
                None,
                cfg.n_heads,
                mask,
                n_kv_heads=cfg.kv_heads,
                positions=positions,
                rope_theta=rope,
                rope_interleaved=cfg.rope_interleaved,
                qk_norm_eps=cfg.layer_norm_eps if cfg.qk_norm else None,
            )

        def ffn(y: np.ndarray, lw: dict = lw) -> np.ndarray:
            h = y @ lw["ffn.in.weight"] + lw.get("ffn.in.bias", 0.0)
            if cfg.gated_ffn:  # GLU: the activation is on the gate, times the linear part
                gate = y @ lw["ffn.gate.weight"] + lw.get("ffn.gate.bias", 0.0)
                h = activation(cfg.activation, gate) * h
            else:
                h = activation(cfg.activation, h)
            return h @ lw["ffn.out.weight"] + lw.get("ffn.out.bias", 0.0)

        if cfg.norm_first:
            skip = i == 0 and not cfg.first_attn_norm  # ModernBERT's layer 0
            a, attn = attend(x if skip else norm(lw, "norm1", x, cfg))
            x = x + a
            x = x + ffn(norm(lw, "norm2", x, cfg))
        else:
            a, attn = attend(x)
            x = norm(lw, "norm1", x + a, cfg)
            x = norm(lw, "norm2", x + ffn(x), cfg)
        hidden_states.append(x)
        attentions.append(attn)
    if cfg.final_norm:
        x = norm(w, "final_norm", x, cfg)
    return Output(x, attentions, hidden_states)


def init_weights(cfg: EncoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 format-v1 weights for tests.

    Every tensor is non-trivial (norm scales near 1 but not 1, non-zero biases), so that a
    transposed, swapped or dropped tensor cannot go unnoticed; projections are N(0, 1/fan_in).
    """
    from shared.weights import expected_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        module = name.split(".")[-2]  # norm, norm1, final_norm, token, q, in, ...
        if "norm" in module:
            a = (
                1.0 + 0.1 * rng.standard_normal(shape)
                if name.endswith("weight")
                else (0.1 * rng.standard_normal(shape))
            )
        elif name.startswith("embeddings.") and module not in ("project", "patch"):  # tables
            a = 0.5 * rng.standard_normal(shape)
        elif len(shape) >= 2:  # linear weights (in, out), the patch one (C, P, P, D)
            a = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
        else:  # linear biases
            a = 0.1 * rng.standard_normal(shape)
        out[name] = a.astype(np.float32)
    return out
