"""``studies.memory_plan``: XLA's buffer plan of the jitted loss-and-gradient per backend."""

from __future__ import annotations

import jax_impl.flash
from shared import EncoderConfig
from studies import memory_plan


def test_memory_plan_reports_less_temporary_memory_for_flash_than_for_math():
    """Flash keeps no (B, H, T, T) arrays; math keeps at least one (H, T, T) float32 array of
    weights for the backward. T spans 4 x 4 of flash's default 256 x 256 blocks: at 2 x 2
    blocks, the few block-sized scratch arrays of one step are already a (H, T, T) array's
    size, and the comparison says nothing."""
    t = 4 * jax_impl.flash.BLOCK_Q
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=t)
    math = memory_plan.plan(cfg, "math", batch=1, seq_len=t)
    flash = memory_plan.plan(cfg, "flash", batch=1, seq_len=t)
    assert math["arguments"] == flash["arguments"] > 0  # the same parameters
    assert math["temporaries"] >= 2 * t * t * 4 > flash["temporaries"]
