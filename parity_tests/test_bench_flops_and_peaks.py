"""The analytic FLOP counts the benchmarks divide by (``shared/flops.py``), checked by hand
and against PyTorch's own counter, and the datasheet peaks (``benchmarks.peaks``)."""

from __future__ import annotations

import pytest
import torch

import torch_impl
from benchmarks import peaks
from shared import EncoderConfig, reference
from shared.flops import forward_flops, layer_forward_flops, matmul_flops, phase_flops


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
