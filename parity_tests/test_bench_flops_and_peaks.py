"""The analytic FLOP counts the benchmarks divide by (``shared/flops.py``), checked by hand,
against the attention weights the float64 oracle computes and against PyTorch's own counter,
and the datasheet peaks (``benchmarks.peaks``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_impl
from benchmarks import peaks
from shared import EncoderConfig, reference
from shared.flops import (
    attended_pairs,
    encoder_forward_flops,
    encoder_layer_flops,
    encoder_phase_flops,
    forward_flops,
    layer_forward_flops,
    matmul_flops,
    phase_flops,
)


def test_layer_flops_match_a_hand_count():
    """B=2, T=3, D=4, F=8, H=2 (hd=2), one layer. Counting each product (n, k) @ (k, m) as
    2*n*k*m FLOPs:

        q, k, v, out projections  (B*T=6, 4) @ (4, 4)   4 x 2*6*4*4   =  768
        scores  Q K^T             B*H=4 of (3, 2) @ (2, 3)  4 x 2*3*2*3 =  144
        weighted values  P V      B*H=4 of (3, 3) @ (3, 2)  4 x 2*3*3*2 =  144
        feed-forward in           (6, 4) @ (4, 8)         2*6*4*8     =  384
        feed-forward out          (6, 8) @ (8, 4)         2*6*8*4     =  384
                                                                total = 1824
    """
    assert layer_forward_flops(batch=2, seq_len=3, d_model=4, d_ff=8) == 1824
    assert matmul_flops(6, 4, 8) == 384


def test_with_the_papers_ffn_width_the_count_is_the_familiar_formula():
    b, t, d = 8, 128, 768
    assert layer_forward_flops(b, t, d, 4 * d) == 24 * b * t * d**2 + 4 * b * t**2 * d


def test_phases_are_multiples_of_the_forward_and_layers_add_up():
    kw = dict(d_model=64, d_ff=256, n_layers=3)
    fwd = forward_flops(2, 10, **kw)
    assert fwd == 3 * layer_forward_flops(2, 10, 64, 256)
    assert phase_flops("forward", 2, 10, **kw) == fwd
    assert phase_flops("forward_backward", 2, 10, **kw) == 3 * fwd
    assert phase_flops("train_step", 2, 10, **kw) == 3 * fwd
    with pytest.raises(ValueError, match="phase"):
        phase_flops("inference", 2, 10, **kw)


def test_flop_formula_equals_torchs_own_flop_counter_on_our_model():
    """torch.utils.flop_counter counts the matrix products that actually run (mm, bmm, ...):
    on the math backend, forward and forward + backward agree with the analytic counts."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = EncoderConfig(vocab_size=50, d_model=32, n_heads=4, d_ff=48, n_layers=2, dropout=0.0)
    model = torch_impl.from_weights(reference.init_weights(cfg), cfg, backend="math").train()
    ids = torch.randint(0, cfg.vocab_size, (3, 7))
    kw = dict(d_model=cfg.d_model, d_ff=cfg.d_ff, n_layers=cfg.n_layers)
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        model(ids)
    assert forward_only.get_total_flops() == phase_flops("forward", 3, 7, **kw)
    with FlopCounterMode(display=False) as both:
        model(ids).square().mean().backward()
    assert both.get_total_flops() == phase_flops("forward_backward", 3, 7, **kw)


def test_a_bert_config_counts_as_the_plain_formula():
    """The config-based count of a BERT config (one with token types and learned positions)
    is the three-size formula's, in every phase."""
    cfg = EncoderConfig(
        vocab_size=50, d_model=32, n_heads=4, d_ff=48, n_layers=3, positional="learned",
        type_vocab_size=2, embed_norm=True, dropout=0.0,
    )  # fmt: skip
    kw = dict(d_model=32, d_ff=48, n_layers=3)
    for phase in ("forward", "forward_backward", "train_step"):
        assert encoder_phase_flops(phase, cfg, 2, 9) == phase_flops(phase, 2, 9, **kw)
    with pytest.raises(ValueError, match="phase"):
        encoder_phase_flops("inference", cfg, 2, 9)


# B=2, T=5, D=4, H=2 query heads of width hd=3 (attn_head_dim, so H*hd = 6 != D), G=1 K/V
# head, F=6 with a GLU gate; layer 0 full, layer 1 a window of half-width 1.
_MODERN = EncoderConfig(
    vocab_size=20, d_model=4, n_heads=2, n_kv_heads=1, attn_head_dim=3, d_ff=6, n_layers=2,
    max_len=8, gated_ffn=True, sliding_window=1,
    layer_types=("full_attention", "sliding_attention"), dropout=0.0,
)  # fmt: skip


def test_glu_gqa_and_window_flops_match_a_hand_count():
    """_MODERN at B=2, T=5 (B*T = 10 rows), each product (n, k) @ (k, m) as 2*n*k*m:

    q projection        (10, 4) @ (4, 2*3=6)           2*10*4*6 = 480
    k, v projections    (10, 4) @ (4, 1*3=3), twice    2 x 240  = 480
    output projection   (10, 6) @ (6, 4)               2*10*6*4 = 480
    ffn in, gate        (10, 4) @ (4, 6), twice        2 x 480  = 960
    ffn out             (10, 6) @ (6, 4)                          480
                                      per layer, not attention = 2880
    layer 0 (full): 25 pairs per head and sequence, B*H = 4 of them,
        Q K^T 4 x 25 x 2*3 = 600, P V 600                          1200
    layer 1 (|i - j| <= 1 at T=5): 5 + 2*4 = 13 pairs,
        Q K^T 4 x 13 x 2*3 = 312, P V 312                           624
    """
    assert encoder_layer_flops(_MODERN, 0, 2, 5) == 2880 + 1200
    assert encoder_layer_flops(_MODERN, 1, 2, 5) == 2880 + 624
    assert encoder_forward_flops(_MODERN, 2, 5) == 2880 * 2 + 1200 + 624
    assert encoder_phase_flops("train_step", _MODERN, 2, 5) == 3 * (2880 * 2 + 1200 + 624)
    with pytest.raises(ValueError, match="layer"):
        encoder_layer_flops(_MODERN, 2, 2, 5)


@pytest.mark.parametrize("window", [1, 2, 3, 8])
def test_window_pairs_are_the_keys_the_oracle_attends(window):
    """The pairs counted for a windowed layer are the (query, key) weights the float64
    oracle leaves nonzero (softmax weights are positive exactly where a key may be
    attended), per head and sequence; a window as wide as the sequence is every pair."""
    t = 7
    cfg = EncoderConfig(
        vocab_size=20, d_model=8, n_heads=2, d_ff=8, n_layers=1, max_len=t, dropout=0.0,
        sliding_window=window,
    )  # fmt: skip
    ids = np.random.default_rng(0).integers(0, 20, (1, t))
    (weights,) = reference.forward(reference.init_weights(cfg), cfg, ids).attentions
    assert weights.shape == (1, 2, t, t)
    attended = int(np.count_nonzero(weights[0, 0]))
    assert attended_pairs(t, window) == attended
    assert attended_pairs(t, None) == t * t
    head_dim = cfg.head_dim
    projections = 4 * matmul_flops(t, 8, 8) + 2 * matmul_flops(t, 8, 8)
    assert encoder_layer_flops(cfg, 0, 1, t) == projections + 2 * 2 * 2 * attended * head_dim
    with pytest.raises(ValueError, match="window"):
        attended_pairs(t, 0)


def test_glu_gqa_flops_equal_torchs_own_flop_counter():
    """With every layer full and the math backend, PyTorch's counter of the products that
    run (mm, bmm, ...) agrees with the config-based count: the gate, the narrow k and v,
    and ELECTRA's embedding projection included, forward and forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _MODERN.replace(layer_types=None, sliding_window=None, embed_dim=6, d_model=8)
    model = torch_impl.from_weights(reference.init_weights(cfg), cfg, backend="math").train()
    ids = torch.randint(0, cfg.vocab_size, (3, 7))
    with FlopCounterMode(display=False) as forward_only, torch.no_grad():
        model(ids)
    assert forward_only.get_total_flops() == encoder_phase_flops("forward", cfg, 3, 7)
    with FlopCounterMode(display=False) as both:
        model(ids).square().mean().backward()
    assert both.get_total_flops() == encoder_phase_flops("forward_backward", cfg, 3, 7)


def test_datasheet_peaks_for_known_devices_and_none_for_the_rest():
    h100 = "NVIDIA H100 80GB HBM3"  # how torch names the SXM part
    assert peaks.datasheet_tflops(h100, "bfloat16", tf32=False) == 989.0
    assert peaks.datasheet_tflops(h100, "float32", tf32=False) == 67.0
    assert peaks.datasheet_tflops(h100, "float32", tf32=True) == 495.0
    assert peaks.datasheet_tflops("NVIDIA H100 PCIe", "bfloat16", tf32=False) == 756.0
    assert peaks.datasheet_tflops("TPU v5 lite", "bfloat16", tf32=False) == 197.0
    assert peaks.datasheet_tflops("TPU v5p", "bfloat16", tf32=False) == 459.0
    assert peaks.datasheet_tflops("TPU v4", "float32", tf32=False) is None
    assert peaks.datasheet_tflops("Intel(R) Xeon(R) Processor", "float32", tf32=False) is None
    assert peaks.datasheet_tflops(None, "float32", tf32=False) is None
