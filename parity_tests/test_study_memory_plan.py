"""``studies.memory_plan``: XLA's buffer plan of the jitted loss-and-gradient per backend."""

from __future__ import annotations

from shared import EncoderConfig
from studies import memory_plan


def test_memory_plan_reports_less_temporary_memory_for_flash_than_for_math():
    """Flash keeps no (B, H, T, T) arrays; math keeps at least one (H, T, T) float32 array of
    weights for the backward."""
    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=512)
    math = memory_plan.plan(cfg, "math", batch=1, seq_len=512)
    flash = memory_plan.plan(cfg, "flash", batch=1, seq_len=512)
    assert math["arguments"] == flash["arguments"] > 0  # the same parameters
    assert math["temporaries"] >= 2 * 512 * 512 * 4 > flash["temporaries"]
