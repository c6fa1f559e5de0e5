"""The benchmark harness (``benchmarks.harness``): statistics, the order of a measurement,
the interleaved timer of the studies, and the resident-memory sampler. No test asserts
anything about how fast something runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import (
    PeakRss,
    Workload,
    measure,
    repeats_within_budget,
    summarize,
    time_interleaved,
)


def test_median_and_iqr_of_an_odd_number_of_timings():
    stats = summarize([5.0, 1.0, 4.0, 2.0, 3.0])  # order does not matter
    assert (stats.median, stats.q1, stats.q3, stats.iqr) == (3.0, 2.0, 4.0, 2.0)
    assert (stats.minimum, stats.n) == (1.0, 5)


def test_quartiles_interpolate_between_timings_as_numpy_does():
    xs = [1.0, 2.0, 3.0, 4.0]
    stats = summarize(xs)
    assert stats.median == 2.5
    assert (stats.q1, stats.q3) == (1.75, 3.25)  # 1 + 0.75 * (2 - 1), 3 + 0.25 * (4 - 3)
    assert (stats.q1, stats.q3) == tuple(np.percentile(xs, [25, 75]))


def test_one_timing_has_no_spread_and_none_is_an_error():
    assert summarize([0.25]).iqr == 0.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_slow_calls_get_fewer_repeats_but_never_fewer_than_the_minimum():
    assert repeats_within_budget(0.01, repeats=7, min_repeats=3, budget_s=10) == 7
    assert repeats_within_budget(2.0, repeats=7, min_repeats=3, budget_s=10) == 5
    assert repeats_within_budget(60.0, repeats=7, min_repeats=3, budget_s=10) == 3
    assert repeats_within_budget(60.0, repeats=2, min_repeats=3, budget_s=10) == 2


def test_measure_calls_the_workload_in_the_documented_order():
    """Kernel probe (first warm-up call), the other warm-up calls, the memory probe, then
    the timed calls, each synchronised; a compile time taken as a first call loses one
    steady-state call."""
    events: list[str] = []
    work = Workload(
        step=lambda: events.append("step") or "out",
        sync=lambda out: events.append(f"sync {out}"),
        kernel_probe=lambda: events.append("kernel") or "some-kernel",
        memory_probe=lambda: events.append("memory") or (123, "counted"),
        compile_s_cold=100.0,
        compile_s_warm=0.0,
        compile_includes_one_call=True,
    )
    m = measure(work, warmup=2, repeats=4, min_repeats=3, budget_s=1e9)
    timed = ["step", "sync out"] * 4
    assert events == ["kernel", "step", "sync out", "memory", *timed]
    assert (m.kernel, m.peak_memory_bytes, m.memory_method, m.stats.n) == (
        "some-kernel",
        123,
        "counted",
        4,
    )
    assert m.compile_s_cold == pytest.approx(100.0 - m.stats.median)
    assert m.compile_s_warm == 0.0  # never negative


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_resident_memory_sampler_sees_a_large_short_lived_allocation():
    size = 64 * 2**20
    with PeakRss() as rss:
        block = np.ones(size, dtype=np.uint8)  # touched, so resident
        time.sleep(0.05)
        del block
    assert rss.peak_bytes is not None
    assert 0.8 * size <= rss.peak_bytes <= 2 * size


def test_interleaved_timing_runs_each_call_once_untimed_then_in_rotated_rounds():
    order: list[str] = []
    timings = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    # untimed, then rounds a b / b a / a b: no candidate always runs first
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(timings[k].wall) for k in "ab"] == [3, 3]
    assert all(t >= 0 for t in timings["a"].cpu)
    assert timings["a"].wall_stats.n == 3
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        time_interleaved({"a": lambda: None}, 0)
