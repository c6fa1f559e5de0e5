"""``python -m studies.sliding_window``: windowed against all-global flash, timed in turn."""

from __future__ import annotations

from studies import sliding_window


def test_windowed_and_global_stacks_are_timed_in_turn_with_their_flops(capsys):
    # layers 1-2 of ModernBERT-base: one global, one local (+-64) layer; at T=256 the local
    # layer attends 256 + 2 * (64 * 256 - 64 * 65 / 2) = 28,864 of the 65,536 pairs
    sliding_window.main(
        ["--framework", "torch", "--layers", "2", "--seq-len", "256", "--repeats", "1"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "torch flash forward, ModernBERT-base first 2 layers, B=1, T=256, 1 interleaved rounds"
    )
    assert [line.split()[0] for line in lines[1:3]] == ["modernbert-base", "modernbert-base-global"]
    gflop = [float(line.split()[-2]) for line in lines[1:3]]
    # the only difference: (65,536 - 28,864) pairs x 2 products x 2 FLOPs x 768 wide
    assert (
        abs((gflop[1] - gflop[0]) * 1e9 - (65_536 - 28_864) * 4 * 768) < 0.002e9
    )  # printed to 1 MFLOP
    assert lines[3].startswith("  global / windowed: wall ")
