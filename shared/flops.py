"""Analytic FLOP counts of the encoder, used by the benchmarks (pure Python, no NumPy).

A FLOP here is one floating-point addition or multiplication, so a matrix product of
(n, k) by (k, m) costs ``2 * n * k * m``. Only matrix products are counted: they are where
the time goes, and they are what a "peak" matmul rate measures. Not counted, because each
is O(B * T * D) and so a few percent at most: biases, residual additions, LayerNorm, the
activation, the softmax, dropout and the embedding lookups (gathers, no arithmetic).

Per encoder layer, forward (notation: B batch, T sequence length, D d_model, F d_ff,
H heads, hd = D / H):

=========================  =======================================  ==================
product                    shapes                                   FLOPs
=========================  =======================================  ==================
q, k, v projections        (B*T, D) @ (D, D), three times           3 * 2*B*T*D*D
scores  Q K^T              H of (T, hd) @ (hd, T), per sequence      2*B*T*T*D
weighted values  P V       H of (T, T) @ (T, hd), per sequence       2*B*T*T*D
output projection          (B*T, D) @ (D, D)                         2*B*T*D*D
feed-forward in            (B*T, D) @ (D, F)                         2*B*T*D*F
feed-forward out           (B*T, F) @ (F, D)                         2*B*T*F*D
=========================  =======================================  ==================

Sum: ``2*B*T*(4*D^2 + 2*D*F) + 4*B*T^2*D``; with the paper's F = 4D this is the familiar
``24*B*T*D^2 + 4*B*T^2*D`` (docs/pitfalls.md, "Benchmarks").

Backward: each product ``Y = X W`` needs ``dX = dY W^T`` and ``dW = X^T dY``, two products of
the forward's size, so forward + backward = 3 x forward (the attention products likewise:
dP and dV for ``P V``, dQ and dK for ``Q K^T``). The first layer's input gradient is
counted too; it is needed, since the embeddings are trained. A fused attention kernel that
recomputes the scores in its backward pass does more work than this: these are *model*
FLOPs (as in MFU, PaLM appendix B), not the hardware's.

A training step adds the optimizer: AdamW costs about a dozen element-wise FLOPs per
parameter, which is negligible next to the products (a BERT-base step does ~1e3 times
more), so a train step is counted as 3 x forward as well.
"""

from __future__ import annotations

__all__ = [
    "PHASES",
    "forward_flops",
    "layer_forward_flops",
    "matmul_flops",
    "phase_flops",
]

PHASES = ("forward", "forward_backward", "train_step")
_FORWARD_MULTIPLE = {"forward": 1, "forward_backward": 3, "train_step": 3}


def matmul_flops(n: int, k: int, m: int) -> int:
    """FLOPs of one (n, k) @ (k, m) product: n*m dot products of length k, 2k FLOPs each."""
    return 2 * n * k * m


def layer_forward_flops(batch: int, seq_len: int, d_model: int, d_ff: int) -> int:
    """Forward FLOPs of one encoder layer (self-attention, so S = T): see the module table."""
    b, t, d, f = batch, seq_len, d_model, d_ff
    projections = 4 * matmul_flops(b * t, d, d)  # q, k, v and out
    attention = 2 * b * matmul_flops(t, d, t)  # Q K^T and P V, all heads together
    feed_forward = matmul_flops(b * t, d, f) + matmul_flops(b * t, f, d)
    return projections + attention + feed_forward


def forward_flops(batch: int, seq_len: int, *, d_model: int, d_ff: int, n_layers: int) -> int:
    """Forward FLOPs of the whole encoder (embeddings count as zero: they are lookups)."""
    return n_layers * layer_forward_flops(batch, seq_len, d_model, d_ff)


def phase_flops(
    phase: str, batch: int, seq_len: int, *, d_model: int, d_ff: int, n_layers: int
) -> int:
    """FLOPs of one call of ``phase``: "forward", "forward_backward" (3x) or "train_step" (3x)."""
    if phase not in _FORWARD_MULTIPLE:
        raise ValueError(f"phase={phase!r} must be one of {PHASES}")
    forward = forward_flops(batch, seq_len, d_model=d_model, d_ff=d_ff, n_layers=n_layers)
    return _FORWARD_MULTIPLE[phase] * forward
