"""``benchmarks.targets``: the project's CPU targets read from results rows."""

from __future__ import annotations


def test_targets_reads_ratios_and_utilisation_from_results_rows():
    from benchmarks.targets import targets

    shape = {"batch": 8, "seq_len": 128, "dtype": "float32"}
    rows = [
        {
            "framework": "torch",
            "implementation": "native",
            "mode": "eager",
            "phase": "forward",
            "median_ms": 100.0,
            **shape,
        },
        {
            "framework": "torch",
            "implementation": "ours",
            "backend": "fused",
            "mode": "eager",
            "phase": "forward",
            "median_ms": 125.0,
            **shape,
        },
        {
            "framework": "jax",
            "implementation": "ours",
            "backend": "math",
            "mode": "compiled",
            "phase": "train_step",
            "utilization": 0.7,
            **shape,
        },
    ]
    got = {what.split(" / ")[0]: (measured, target) for what, measured, target in targets(rows)}
    assert got["torch ours-fused eager"] == (0.8, 0.95)  # 100 ms / 125 ms of throughput
    assert got["jax ours-math compiled train step"] == (0.7, 0.65)
    assert got["jax ours-math jit"] == (None, 1.0)  # no native JAX row: reported missing


def test_long_sequence_targets_compare_jax_flash_with_torchs_best():
    from benchmarks.targets import long_sequence_targets, verdict

    step = {"batch": 1, "seq_len": 2048, "dtype": "float32", "phase": "train_step"}
    step |= {"mode": "compiled", "implementation": "ours"}
    rows = [
        {
            "framework": "torch",
            "backend": "fused",
            "median_ms": 4000.0,
            "peak_memory_bytes": 600,
            **step,
        },
        {
            "framework": "torch",
            "backend": "math",
            "median_ms": 5000.0,
            "peak_memory_bytes": 900,
            **step,
        },
        {
            "framework": "jax",
            "backend": "flash",
            "median_ms": 5000.0,
            "peak_memory_bytes": 1200,
            "utilization": 0.5,
            **step,
        },
    ]
    (util, memory, time) = long_sequence_targets(rows)
    assert util[1:] == (0.5, 0.60) and verdict(*util[1:]) == "MISSED"
    assert memory[1] == 0.5 and verdict(*memory[1:]) == "MISSED"  # 1200 B is 2x torch's 600 B
    assert time[1:] == (0.8, None) and verdict(*time[1:]) == "stated"  # 4000 ms / 5000 ms
    assert all(m is None for _, m, _ in long_sequence_targets(rows[:2]))


def test_long_sequence_memory_is_checked_per_remat_against_torchs_best_without_remat():
    from benchmarks.targets import long_sequence_targets, verdict

    step = {"batch": 1, "seq_len": 2048, "dtype": "float32", "phase": "train_step"}
    step |= {"mode": "compiled", "implementation": "ours"}

    def row(framework, backend, remat, ms, memory, **extra):
        return {
            "framework": framework,
            "backend": backend,
            "remat": remat,
            "median_ms": ms,
            "peak_memory_bytes": memory,
            **extra,
            **step,
        }

    rows = [
        row("torch", "fused", "block", 5000.0, 300),  # not PyTorch's best without remat
        row("torch", "fused", "none", 4000.0, 600),
        row("jax", "flash", "block", 6000.0, 400, utilization=0.4),
        row("jax", "flash", "none", 5000.0, 1200, utilization=0.5),
    ]
    got = {what: (measured, target) for what, measured, target in long_sequence_targets(rows)}
    assert len(got) == 5
    util = got["jax ours-flash compiled train step B=1, T=2048 / measured matmul peak"]
    assert util == (0.5, 0.60)  # the row without remat, not the block one listed first
    none = got["torch best peak memory / jax ours-flash peak memory, train step B=1, T=2048"]
    assert none[0] == 0.5 and verdict(*none) == "MISSED"  # 1200 B is 2x torch's 600 B
    block = got[
        "torch best peak memory / jax ours-flash (remat block) peak memory, train step B=1, T=2048"
    ]
    assert block[0] == 1.5 and verdict(*block) == "met"  # 400 B against torch's 600 B
    same = got[
        "torch best (remat block) / jax ours-flash (remat block) peak memory, "
        "train step B=1, T=2048"
    ]
    assert same == (0.75, None) and verdict(*same) == "stated"  # 300 B / 400 B
    time = got["torch best time / jax ours-flash time, train step B=1, T=2048"]
    assert time == (0.8, None)  # 4000 ms (no remat) / 5000 ms
