"""Scaled dot-product and multi-head attention in PyTorch.

Mirrors ``jax_impl/attention.py`` statement for statement; ``diff`` the two files to see
the framework idioms and nothing else.

Notation: B batch, T query length, S key length, D d_model, H heads, hd head_dim = D / H.
Masks are boolean, True = may attend (``shared/masks.py``), shaped to broadcast to (B, H, T, S).
The model passes padding as a (B, S) ``key_padding_mask`` and causality as ``is_causal``;
only the backends that need one build the dense (B|1, 1, T, S) mask (:func:`combine_masks`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.backends import BACKENDS, backend_info
from shared.inputs import check_key_padding_mask, check_mask_shape
from torch_impl.flash import flash_attention, hide_masked_keys

__all__ = [
    "ATTENTION",
    "BACKENDS",
    "MultiHeadAttention",
    "combine_masks",
    "flash_attention",
    "fused_attention",
    "make_attention_mask",
    "math_attention",
    "scaled_dot_product_attention",
]


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(hd)) V, written out.

    Args:
        q: (B, H, T, hd) queries; k, v: (B, H, S, hd) keys and values.
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
) -> torch.Tensor:
    """:func:`scaled_dot_product_attention` on the combined dense mask; the output only."""
    mask = combine_masks(mask, key_padding_mask, is_causal=is_causal, q=q, k=k)
    return scaled_dot_product_attention(q, k, v, mask)[0]


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """The same function through PyTorch's fused kernel, ``F.scaled_dot_product_attention``.

    Fused kernels never materialise the weights, so only the output (B, H, T, hd) comes back.
    Causality alone goes to the kernel as its own flag (no mask built). Rows with no allowed
    key are given every key (a finite average) and then zeroed, which matches
    :func:`scaled_dot_product_attention` whatever kernel PyTorch picks. Keys no query may attend
    to are zeroed first (``hide_masked_keys``): a kernel adds -inf to a masked score, and
    -inf + NaN is NaN, so a NaN in a padded key would otherwise reach every output.
    """
    k, v = hide_masked_keys(k, v, mask, key_padding_mask, is_causal=is_causal, q_len=q.shape[2])
    if mask is None and key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    mask = combine_masks(mask, key_padding_mask, is_causal=is_causal, q=q, k=k)
    has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T, 1)
    mask = mask | ~has_key  # (B|1, H|1, T|1, S)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.masked_fill(~has_key, 0.0)  # (B, H, T, hd)


def make_attention_mask(
    attention_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q_len: int,
    k_len: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """(B, S) real-token mask and/or causality -> one boolean (B|1, 1, T, S) mask, or None."""
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    if is_causal:
        k_len = q_len if k_len is None else k_len
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()[None, None]
        mask = causal if mask is None else mask & causal  # (B|1, 1, T, S)
    return mask


def combine_masks(
    mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    q: torch.Tensor,
    k: torch.Tensor,
) -> torch.Tensor | None:
    """General mask & (B, S) padding & causality -> one dense boolean mask, or None."""
    dense = make_attention_mask(
        key_padding_mask, is_causal=is_causal, q_len=q.shape[2], k_len=k.shape[2], device=q.device
    )
    if mask is None or dense is None:
        return mask if dense is None else dense
    return mask & dense  # (B|1, H|1, T, S)


ATTENTION = {"math": math_attention, "fused": fused_attention, "flash": flash_attention}


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o, head_i = Attention(Q W_q^i, K W_k^i, V W_v^i).

    Self-attention when ``context`` is omitted, cross-attention otherwise. The attention
    function is chosen once, here, from :data:`ATTENTION` by ``backend`` (the names of
    ``shared/backends.py``): ``"math"`` runs :func:`scaled_dot_product_attention`,
    ``"fused"`` :func:`fused_attention`, ``"flash"`` :func:`flash_attention` (same numbers,
    tested). A call with ``return_attention=True`` always runs the math path, because the
    fused and flash backends do not produce the weights; :meth:`runs` says which one runs.
    """

    def __init__(
        self, d_model: int, n_heads: int, *, backend: str = "math", dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        backend_info(backend)  # ValueError naming the known backends
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.backend = backend
        self.attend = ATTENTION[backend]
        self.q = linear(d_model, d_model, dtype=dtype)
        self.k = linear(d_model, d_model, dtype=dtype)
        self.v = linear(d_model, d_model, dtype=dtype)
        self.out = linear(d_model, d_model, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), context (B, S, D) -> (B, T, D) [and weights (B, H, T, S)].

        Args:
            mask: general boolean (B|1, H|1, T|1, S) mask, True = may attend.
            key_padding_mask: boolean (B, S), True = real key (padding masked out).
            is_causal: query t attends to keys s <= t only.
            The three combine (logical and).
        """
        context = x if context is None else context
        b, t, _ = x.shape
        s = context.shape[1]
        h, hd = self.n_heads, self.head_dim
        if mask is not None:
            check_mask_shape(tuple(mask.shape), dtype_kind(mask), b=b, h=h, t=t, s=s)
        if key_padding_mask is not None:
            check_key_padding_mask(
                tuple(key_padding_mask.shape), dtype_kind(key_padding_mask), b, s
            )

        # 1. Project, and split the feature axis into heads. The head count comes from the
        #    tensor: under tensor parallelism a device holds only its H / M local heads.
        q = self.q(x).view(b, t, -1, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(context).view(b, s, -1, hd).transpose(1, 2)  # (B, H, S, hd)
        v = self.v(context).view(b, s, -1, hd).transpose(1, 2)  # (B, H, S, hd)

        # 2. Attend, in every head at once.
        masks = {"key_padding_mask": key_padding_mask, "is_causal": is_causal}
        if return_attention:
            mask = combine_masks(mask, **masks, q=q, k=k)
            out, weights = scaled_dot_product_attention(q, k, v, mask)
        else:
            out, weights = self.attend(q, k, v, mask, **masks), None

        # 3. Concatenate the heads and project back.
        out = out.transpose(1, 2).reshape(b, t, -1)  # (B, T, D), or (B, T, D / M) per device
        out = self.out(out)
        return (out, weights) if return_attention else out

    def runs(self, *, return_attention: bool = False) -> str:
        """The backend a call runs: ``"math"`` when the weights are asked of a backend that
        has none (``shared.backends``), ``self.backend`` otherwise."""
        if return_attention and not backend_info(self.backend).returns_weights:
            return "math"
        return self.backend


def linear(d_in: int, d_out: int, *, dtype: torch.dtype | None = None) -> nn.Linear:
    """``nn.Linear`` initialised as ``jax_impl`` does: Xavier-uniform weight, zero bias."""
    layer = nn.Linear(d_in, d_out, dtype=dtype)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def dtype_kind(x: torch.Tensor) -> str:
    """NumPy dtype kind of a tensor: 'b', 'f', 'c', 'u' or 'i'."""
    if x.dtype == torch.bool:
        return "b"
    if x.dtype.is_floating_point:
        return "f"
    if x.dtype.is_complex:
        return "c"
    return "u" if x.dtype == torch.uint8 else "i"
