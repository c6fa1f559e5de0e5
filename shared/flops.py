"""Analytic FLOP counts of the encoder, used by the benchmarks (pure Python, no NumPy).

A FLOP here is one floating-point addition or multiplication, so a matrix product of
(n, k) by (k, m) costs ``2 * n * k * m``. Only matrix products are counted: they are where
the time goes, and they are what a "peak" matmul rate measures. Not counted, because each
is O(B * T * D) and so a few percent at most: biases, residual additions, LayerNorm and
RMSNorm, the activation and the GLU's product, RoPE's rotation, the softmax, dropout and
the embedding lookups (gathers, no arithmetic). No head is counted: the encoder ends at its
last hidden state (and final norm), as the benchmarks time it.

Per encoder layer, forward (notation: B batch, T sequence length, D d_model, F d_ff,
H heads, G K/V heads (``EncoderConfig.kv_heads``: G = H without grouped-query attention),
hd head width (``EncoderConfig.head_dim``: D / H unless ``attn_head_dim`` is set), P the
(query, key) pairs of one sequence that one head scores):

=========================  =======================================  ==================
product                    shapes                                   FLOPs
=========================  =======================================  ==================
q projection               (B*T, D) @ (D, H*hd)                     2*B*T*D*H*hd
k, v projections           (B*T, D) @ (D, G*hd), twice              2 * 2*B*T*D*G*hd
scores  Q K^T              B*H rows of P dot products of length hd  2*B*H*P*hd
weighted values  P V       B*H times P multiply-adds into hd wide   2*B*H*P*hd
output projection          (B*T, H*hd) @ (H*hd, D)                  2*B*T*H*hd*D
feed-forward in            (B*T, D) @ (D, F)                        2*B*T*D*F
feed-forward gate (GLU)    (B*T, D) @ (D, F), ``gated_ffn`` only    2*B*T*D*F
feed-forward out           (B*T, F) @ (F, D)                        2*B*T*F*D
=========================  =======================================  ==================

P is T*T in a full-attention layer. In a sliding-window layer of half-width w
(``EncoderConfig.layer_window``: query i attends keys |i - j| <= w) it is the exact count of
such pairs, ``T + 2 * (m*T - m*(m+1)/2)`` with ``m = min(w, T - 1)``: min(T, 2w + 1) keys
per query, fewer at the two edges (:func:`attended_pairs`). These are the products a
kernel that skips the masked keys performs (the flash backend skips whole blocks); the math
and fused backends compute the full T*T scores and mask them, so on those rows a windowed
layer's count is below the work done.

Causal attention (``causal``, ``is_causal``) is counted like bidirectional attention: all
T*T pairs (or the two-sided window), not the T*(T+1)/2 a causal mask keeps. This is the
convention these counts have always had (PaLM's appendix B counts the full square too); the
benchmarks run bidirectional encoders.

For BERT's shapes (G = H, hd = D / H, no gate, full attention) the sum is
``2*B*T*(4*D^2 + 2*D*F) + 4*B*T^2*D``; with the paper's F = 4D this is the familiar
``24*B*T*D^2 + 4*B*T^2*D`` (docs/pitfalls.md, "Benchmarks"). The embeddings add one product
when they have one: ELECTRA's projection ``(B*T, E) @ (E, D)`` (``embed_dim``), and a ViT's
patch projection ``(B*N, C*p*p) @ (C*p*p, D)`` for N = T - 1 patches (``image_size``).

Backward: each product ``Y = X W`` needs ``dX = dY W^T`` and ``dW = X^T dY``, two products of
the forward's size, so forward + backward = 3 x forward (the attention products likewise:
dP and dV for ``P V``, dQ and dK for ``Q K^T``). The first layer's input gradient is
counted too; it is needed, since the embeddings are trained. A fused attention kernel that
recomputes the scores in its backward pass does more work than this: these are *model*
FLOPs (as in MFU, PaLM appendix B), not the hardware's.

A training step adds the optimizer: AdamW costs about a dozen element-wise FLOPs per
parameter, which is negligible next to the products (a BERT-base step does ~1e3 times
more), so a train step is counted as 3 x forward as well.

Two sets of functions: :func:`encoder_phase_flops` and friends read an
:class:`~shared.config.EncoderConfig` and count what it computes (the benchmarks use these);
:func:`phase_flops`, :func:`forward_flops` and :func:`layer_forward_flops` take BERT's
three sizes (``d_model``, ``d_ff``, ``n_layers``) and count a plain encoder.
"""

from __future__ import annotations

from shared.config import EncoderConfig

__all__ = [
    "PHASES",
    "attended_pairs",
    "embedding_flops",
    "encoder_forward_flops",
    "encoder_layer_flops",
    "encoder_phase_flops",
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


def _check_phase(phase: str) -> int:
    if phase not in _FORWARD_MULTIPLE:
        raise ValueError(f"phase={phase!r} must be one of {PHASES}")
    return _FORWARD_MULTIPLE[phase]


def _check_shape(batch: int, seq_len: int) -> None:
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


# --- from a config ---------------------------------------------------------------------------


def attended_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs of one sequence that one head scores: ``seq_len**2`` without a
    window; with half-width ``window`` (keys |i - j| <= window), exactly
    ``T + 2 * (m*T - m*(m+1)/2)``, ``m = min(window, T - 1)``: the diagonal, and T - d pairs
    at each distance d = 1..m on either side. ValueError for T < 1 or a window < 1."""
    _check_shape(1, seq_len)
    if window is None:
        return seq_len * seq_len
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")
    m = min(window, seq_len - 1)
    return seq_len + 2 * (m * seq_len - m * (m + 1) // 2)


def encoder_layer_flops(cfg: EncoderConfig, layer: int, batch: int, seq_len: int) -> int:
    """Forward FLOPs of layer ``layer`` of ``cfg`` (self-attention, S = T): the module
    table, with that layer's attention kind (``cfg.layer_window(layer)``)."""
    _check_shape(batch, seq_len)
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer={layer!r} must lie in [0, n_layers={cfg.n_layers})")
    n, d, f = batch * seq_len, cfg.d_model, cfg.d_ff
    q_width = cfg.n_heads * cfg.head_dim  # H * hd
    kv_width = cfg.kv_heads * cfg.head_dim  # G * hd
    projections = (
        matmul_flops(n, d, q_width) + 2 * matmul_flops(n, d, kv_width) + matmul_flops(n, q_width, d)
    )
    pairs = attended_pairs(seq_len, cfg.layer_window(layer))
    attention = 2 * (2 * batch * cfg.n_heads * pairs * cfg.head_dim)  # Q K^T and P V
    ffn_in = (2 if cfg.gated_ffn else 1) * matmul_flops(n, d, f)  # in, and the GLU's gate
    return projections + attention + ffn_in + matmul_flops(n, f, d)


def embedding_flops(cfg: EncoderConfig, batch: int, seq_len: int) -> int:
    """Forward FLOPs of the embeddings: ELECTRA's E -> D projection, a ViT's patch
    projection over its ``seq_len - 1`` patches, else 0 (lookups and sums only)."""
    _check_shape(batch, seq_len)
    if cfg.image_size:
        patch = cfg.num_channels * cfg.patch_size**2
        return matmul_flops(batch * (seq_len - 1), patch, cfg.d_model)
    if cfg.embed_dim:
        return matmul_flops(batch * seq_len, cfg.embed_dim, cfg.d_model)
    return 0


def encoder_forward_flops(cfg: EncoderConfig, batch: int, seq_len: int) -> int:
    """Forward FLOPs of the whole encoder ``cfg`` at (batch, seq_len): embeddings, then
    every layer with its own attention kind."""
    layers = sum(encoder_layer_flops(cfg, i, batch, seq_len) for i in range(cfg.n_layers))
    return embedding_flops(cfg, batch, seq_len) + layers


def encoder_phase_flops(phase: str, cfg: EncoderConfig, batch: int, seq_len: int) -> int:
    """FLOPs of one call of ``phase`` on ``cfg``: "forward", "forward_backward" (3x) or
    "train_step" (3x). ValueError for another phase."""
    return _check_phase(phase) * encoder_forward_flops(cfg, batch, seq_len)


# --- from BERT's three sizes -----------------------------------------------------------------


def layer_forward_flops(batch: int, seq_len: int, d_model: int, d_ff: int) -> int:
    """Forward FLOPs of one plain encoder layer (H = G heads of width D / H, no gate, full
    bidirectional self-attention): ``2*B*T*(4*D^2 + 2*D*F) + 4*B*T^2*D``."""
    b, t, d, f = batch, seq_len, d_model, d_ff
    projections = 4 * matmul_flops(b * t, d, d)  # q, k, v and out
    attention = 2 * b * matmul_flops(t, d, t)  # Q K^T and P V, all heads together
    feed_forward = matmul_flops(b * t, d, f) + matmul_flops(b * t, f, d)
    return projections + attention + feed_forward


def forward_flops(batch: int, seq_len: int, *, d_model: int, d_ff: int, n_layers: int) -> int:
    """Forward FLOPs of a plain encoder (embeddings count as zero: they are lookups)."""
    return n_layers * layer_forward_flops(batch, seq_len, d_model, d_ff)


def phase_flops(
    phase: str, batch: int, seq_len: int, *, d_model: int, d_ff: int, n_layers: int
) -> int:
    """FLOPs of one call of ``phase`` on a plain encoder: "forward", "forward_backward" (3x)
    or "train_step" (3x). For any config, use :func:`encoder_phase_flops`."""
    multiple = _check_phase(phase)
    return multiple * forward_flops(batch, seq_len, d_model=d_model, d_ff=d_ff, n_layers=n_layers)
