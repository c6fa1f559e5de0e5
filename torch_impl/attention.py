"""Scaled dot-product and multi-head attention in PyTorch.

Mirrors ``jax_impl/attention.py`` statement for statement; ``diff`` the two files to see
the framework idioms and nothing else.

Notation: B batch, T query length, S key length, D d_model, H heads, G K/V heads, hd
head_dim (D / H unless the config sets it).
Masks are boolean, True = may attend (``shared/masks.py``), shaped to broadcast to (B, H, T, S).
The model passes padding as a (B, S) ``key_padding_mask``, causality as ``is_causal`` and a
sliding window as ``window`` (keys |t - s| <= window, ``shared.masks.band``); only the
backends that need one build the dense (B|1, 1, T, S) mask (:func:`combine_masks`).

Grouped-query attention (Ainslie et al. 2023): k and v may hold G heads, G dividing H;
query head h reads K/V head h // (H / G). The math path repeats K/V per group
(:func:`repeat_kv`), the fused kernel takes the groups natively, flash never repeats them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.backends import BACKENDS, backend_info
from shared.inputs import check_key_padding_mask, check_mask_shape
from torch_impl.flash import check_window, flash_attention, hide_masked_keys
from torch_impl.precision import as_dtype

__all__ = [
    "ATTENTION",
    "BACKENDS",
    "MultiHeadAttention",
    "RMSNorm",
    "apply_rope",
    "combine_masks",
    "flash_attention",
    "fused_attention",
    "make_attention_mask",
    "math_attention",
    "repeat_kv",
    "scaled_dot_product_attention",
]


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, G, S, hd) K or V heads -> (B, H, S, hd), head j repeated for query heads
    j * H/G .. (j + 1) * H/G - 1. Raises ValueError unless G divides H."""
    g = x.shape[1]
    if n_heads % g:
        raise ValueError(
            f"K/V heads must divide query heads: got {g} K/V heads, {n_heads} query heads"
        )
    return x if g == n_heads else x.repeat_interleave(n_heads // g, dim=1)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer) of q or k.

    Args:
        x: (B, H, T, hd) queries or keys.
        positions: (B|1, T) integer positions.
        inv_freq: (hd/2,) theta_p = base^(-2p / hd) (``shared.positional.rope_inverse_frequencies``).
        interleaved: pairs (2p, 2p + 1) instead of transformers' (p, p + hd/2).

    Returns:
        (B, H, T, hd) in x's dtype: pair (a, b) at angle m * theta_p becomes
        (a cos - b sin, a sin + b cos), computed in at least float32.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = positions[:, None, :, None].to(acc) * inv_freq.to(acc)[None, None, None]
    cos, sin = torch.cos(angles), torch.sin(angles)
    y = x.to(acc)
    if interleaved:
        a, b = y[..., 0::2], y[..., 1::2]
    else:
        a, b = y[..., : y.shape[-1] // 2], y[..., y.shape[-1] // 2 :]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        return torch.stack([ra, rb], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([ra, rb], dim=-1).to(x.dtype)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(hd)) V, written out.

    Args:
        q: (B, H, T, hd) queries; k, v: (B, G, S, hd) keys and values, G dividing H
            (repeated per group, :func:`repeat_kv`).
        mask: boolean, broadcastable to (B, H, T, S); True = may attend.

    Returns:
        ``(output (B, H, T, hd), weights (B, H, T, S))``. The softmax runs in at least
        float32. A query row with no allowed key gets all-zero weights, so a zero output
        and finite gradients (the paper leaves this case undefined; PyTorch's
        ``nn.MultiheadAttention`` returns NaN there).
        Keys no query may attend to are never read (``hide_masked_keys``): a NaN or Inf in
        their K or V rows changes neither the output nor any gradient.
    """
    k, v = hide_masked_keys(k, v, mask, None, is_causal=False, q_len=q.shape[2])
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])  # (B, H, S, hd)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    scores = scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # finite fill
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # only changes rows with no allowed key
    weights = weights.to(v.dtype)
    return weights @ v, weights  # (B, H, T, hd), (B, H, T, S)


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
) -> torch.Tensor:
    """:func:`scaled_dot_product_attention` on the combined dense mask; the output only."""
    mask = combine_masks(mask, key_padding_mask, is_causal=is_causal, q=q, k=k, window=window)
    return scaled_dot_product_attention(q, k, v, mask)[0]


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    window: int | None = None,
) -> torch.Tensor:
    """The same function through PyTorch's fused kernel, ``F.scaled_dot_product_attention``.

    Fused kernels never materialise the weights, so only the output (B, H, T, hd) comes back.
    Causality alone goes to the kernel as its own flag (no mask built). Rows with no allowed
    key are given every key (a finite average) and then zeroed, which matches
    :func:`scaled_dot_product_attention` whatever kernel PyTorch picks. Keys no query may attend
    to are zeroed first (``hide_masked_keys``): a kernel adds -inf to a masked score, and
    -inf + NaN is NaN, so a NaN in a padded key would otherwise reach every output.
    K/V with fewer heads go to the kernel as they are (``enable_gqa``); a window is a mask.
    """
    k, v = hide_masked_keys(k, v, mask, key_padding_mask, is_causal=is_causal, q_len=q.shape[2])
    gqa = {"enable_gqa": k.shape[1] != q.shape[1]}
    if mask is None and key_padding_mask is None and window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, **gqa)
    mask = combine_masks(mask, key_padding_mask, is_causal=is_causal, q=q, k=k, window=window)
    has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T, 1)
    mask = mask | ~has_key  # (B|1, H|1, T|1, S)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
    return out.masked_fill(~has_key, 0.0)  # (B, H, T, hd)


def make_attention_mask(
    attention_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q_len: int,
    k_len: int | None = None,
    device: torch.device | None = None,
    window: int | None = None,
) -> torch.Tensor | None:
    """(B, S) real-token mask, causality and/or a sliding window -> one boolean
    (B|1, 1, T, S) mask, or None."""
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    k_len = q_len if k_len is None else k_len
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
        mask = causal if mask is None else mask & causal  # (B|1, 1, T, S)
    if window is not None:
        t = torch.arange(q_len, device=device)[:, None]
        s = torch.arange(k_len, device=device)[None, :]
        band = ((t - s).abs() <= check_window(window))[None, None]  # (1, 1, T, S)
        mask = band if mask is None else mask & band
    return mask


def combine_masks(
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q: torch.Tensor,
    k: torch.Tensor,
    window: int | None = None,
) -> torch.Tensor | None:
    """General mask & (B, S) padding & causality & window -> one dense boolean mask, or None."""
    dense = make_attention_mask(
        key_padding_mask,
        is_causal=is_causal,
        q_len=q.shape[2],
        k_len=k.shape[2],
        device=q.device,
        window=window,
    )
    if mask is None or dense is None:
        return mask if dense is None else dense
    return mask & dense  # (B|1, H|1, T, S)


ATTENTION = {"math": math_attention, "fused": fused_attention, "flash": flash_attention}


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o, head_i = Attention(Q W_q^i, K W_k^i, V W_v^i).

    Self-attention when ``context`` is omitted, cross-attention otherwise. Optional parts:
    ``n_kv_heads`` K/V heads shared by groups of query heads (GQA, Ainslie et al. 2023),
    a ``head_dim`` other than d_model / n_heads (Qwen3), no biases (``bias=False``), an
    RMSNorm over each head of q and k (``qk_norm_eps``, Qwen3), and RoPE on q and k (the
    ``rope`` argument of the call; Su et al. 2021). The attention
    function is chosen once, here, from :data:`ATTENTION` by ``backend`` (the names of
    ``shared/backends.py``): ``"math"`` runs :func:`scaled_dot_product_attention`,
    ``"fused"`` :func:`fused_attention`, ``"flash"`` :func:`flash_attention` (same numbers,
    tested). A call with ``return_attention=True`` always runs the math path, because the
    fused and flash backends do not produce the weights; :meth:`runs` says which one runs.
    On a mesh whose "seq" axis is > 1, ``parallelize`` sets ``context_parallel`` (a
    ``context.ContextParallel``): attention then runs over the sequence split across that
    axis (ring or all-gather), and ``return_attention`` and a general ``mask`` are errors.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        backend: str = "math",
        dtype: torch.dtype | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        qk_norm_eps: float | None = None,
        rope_interleaved: bool = False,
    ) -> None:
        super().__init__()
        dtype = as_dtype(dtype)
        check_heads(d_model, n_heads, n_kv_heads, head_dim)
        backend_info(backend)  # ValueError naming the known backends
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or d_model // n_heads
        self.backend = backend
        self.attend = ATTENTION[backend]
        self.rope_interleaved = rope_interleaved
        self.context_parallel = None  # a ContextParallel, set by parallelize on a seq axis > 1
        width, kv_width = n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q = linear(d_model, width, dtype=dtype, bias=bias)
        self.k = linear(d_model, kv_width, dtype=dtype, bias=bias)
        self.v = linear(d_model, kv_width, dtype=dtype, bias=bias)
        self.out = linear(width, d_model, dtype=dtype, bias=bias)
        norm = qk_norm_eps is not None
        self.q_norm = RMSNorm(self.head_dim, qk_norm_eps, dtype=dtype) if norm else None
        self.k_norm = RMSNorm(self.head_dim, qk_norm_eps, dtype=dtype) if norm else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        window: int | None = None,
        rope: tuple | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), context (B, S, D) -> (B, T, D) [and weights (B, H, T, S)].

        Args:
            mask: general boolean (B|1, H|1, T|1, S) mask, True = may attend.
            key_padding_mask: boolean (B, S), True = real key (padding masked out).
            is_causal: query t attends to keys s <= t only.
            window: query t attends to keys |t - s| <= window only (sliding window).
            The four combine (logical and).
            rope: ``(positions (B|1, T), inv_freq (hd/2,))``: rotate q and k (after the q/k
                norm) by RoPE at these positions (:func:`apply_rope`); self-attention only.
        """
        context = x if context is None else context
        b, t, _ = x.shape
        s = context.shape[1]
        h, hd = self.n_heads, self.head_dim
        if return_attention and self.context_parallel is not None:
            raise ValueError(
                "context parallelism never forms the (T, T) weights: expected "
                "return_attention=False on a model parallelized over a seq axis > 1"
            )
        if mask is not None:
            check_mask_shape(tuple(mask.shape), dtype_kind(mask), b=b, h=h, t=t, s=s)
        if key_padding_mask is not None:
            check_key_padding_mask(
                tuple(key_padding_mask.shape), dtype_kind(key_padding_mask), b, s
            )

        # 1. Project, and split the feature axis into heads. The head count comes from the
        #    tensor: under tensor parallelism a device holds only its H / M local heads.
        q = self.q(x).view(b, t, -1, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(context).view(b, s, -1, hd).transpose(1, 2)  # (B, G, S, hd)
        v = self.v(context).view(b, s, -1, hd).transpose(1, 2)  # (B, G, S, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            positions, inv_freq = rope
            q = apply_rope(q, positions, inv_freq, interleaved=self.rope_interleaved)
            k = apply_rope(k, positions, inv_freq, interleaved=self.rope_interleaved)

        # 2. Attend, in every head at once.
        masks = {"key_padding_mask": key_padding_mask, "is_causal": is_causal, "window": window}
        if return_attention:
            mask = combine_masks(mask, **masks, q=q, k=k)
            out, weights = scaled_dot_product_attention(q, k, v, mask)
        elif self.context_parallel is not None:  # the "seq" axis's ranks attend together
            out, weights = self.context_parallel.attend(q, k, v, mask, **masks), None
        else:
            out, weights = self.attend(q, k, v, mask, **masks), None

        # 3. Concatenate the heads and project back.
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, H hd), or (B, T, H hd / M) per device
        out = self.out(out)
        return (out, weights) if return_attention else out

    def runs(self, *, return_attention: bool = False) -> str:
        """The backend a call runs: ``"math"`` when the weights are asked of a backend that
        has none (``shared.backends``), ``self.backend`` otherwise."""
        if return_attention and not backend_info(self.backend).returns_weights:
            return "math"
        return self.backend


def linear(
    d_in: int, d_out: int, *, dtype: torch.dtype | None = None, bias: bool = True
) -> nn.Linear:
    """``nn.Linear`` initialised as ``jax_impl`` does: Xavier-uniform weight, zero bias (or none)."""
    layer = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight over the last axis,
    no mean subtracted, no bias; computed in at least float32 (as transformers does), the
    result in x's dtype. Weight initialised to one."""

    def __init__(self, width: int, eps: float, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = x.to(acc)
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        weight = self.weight.to(acc).reshape((1,) * (x.ndim - 1) + (-1,))
        return (y * weight).to(x.dtype)


def check_heads(d_model: int, n_heads: int, n_kv_heads: int | None, head_dim: int | None) -> None:
    """ValueError unless the head counts fit: H divides D (without an explicit head_dim) and
    the K/V heads G divide H."""
    if head_dim is None and d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    if n_kv_heads is not None and (n_kv_heads < 1 or n_heads % n_kv_heads):
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")


def dtype_kind(x: torch.Tensor) -> str:
    """NumPy dtype kind of a tensor: 'b', 'f', 'c', 'u' or 'i'."""
    if x.dtype == torch.bool:
        return "b"
    if x.dtype.is_floating_point:
        return "f"
    if x.dtype.is_complex:
        return "c"
    return "u" if x.dtype == torch.uint8 else "i"
