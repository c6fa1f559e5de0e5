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
