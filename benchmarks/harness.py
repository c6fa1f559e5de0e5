"""Timing: warm-up, synchronisation, medians and spread, compile time, memory sampling.

Framework-neutral: the framework runners (``run_torch``, ``run_jax``) hand over a
:class:`Workload` (one call of the thing to time, and how to wait for it to finish), and
this module times it the same way for both:

1. the runner compiles (compiled modes) and reports the cold compile time, and the warm one
   (compiled again from filled caches) where the suite asks for it;
2. ``warmup`` untimed calls, the first of them profiled to name the attention kernel;
3. one untimed call during which memory is measured (a sampling thread or a profiler would
   perturb a timed call);
4. timed calls, each ``t0 = perf_counter(); out = step(); sync(out); t1 = perf_counter()``
   -- ``sync`` is ``block_until_ready`` / ``torch.cuda.synchronize``, without which
   asynchronous dispatch would time only the launch -- ``repeats`` of them, or fewer (never
   fewer than ``min_repeats``) when one call is so slow that they would exceed ``budget_s``;
5. the median of the timed calls, and their interquartile range as the spread.

The same :func:`measure` runs one device in the parent process and every device of a mesh in
the child processes of ``benchmarks.mesh``. :func:`time_interleaved` is the timer of the
studies (``studies/``), which compare candidates in alternating rounds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Measurement",
    "PeakRss",
    "Stats",
    "Timings",
    "Workload",
    "measure",
    "repeats_within_budget",
    "summarize",
    "time_calls",
    "time_interleaved",
]


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    q1: float  # first quartile
    q3: float  # third quartile
    minimum: float
    n: int

    @property
    def iqr(self) -> float:
        """Interquartile range q3 - q1: the spread of the middle half of the timings."""
        return self.q3 - self.q1


def summarize(samples: Sequence[float]) -> Stats:
    """Median and quartiles of ``samples``.

    Quartiles interpolate linearly between order statistics (``statistics.quantiles`` with
    ``method="inclusive"``, the same as NumPy's default ``percentile``), so they are defined
    for any number of samples; with one sample the spread is 0.
    """
    if not samples:
        raise ValueError("need at least one timing to summarize")
    xs = sorted(float(s) for s in samples)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return Stats(median=statistics.median(xs), q1=q1, q3=q3, minimum=xs[0], n=len(xs))


def repeats_within_budget(call_s: float, *, repeats: int, min_repeats: int, budget_s: float) -> int:
    """How many timed calls to make: ``repeats``, or fewer when ``repeats`` calls of
    ``call_s`` seconds would take longer than ``budget_s``, but never fewer than ``min_repeats``."""
    if call_s <= 0:
        return repeats
    affordable = math.floor(budget_s / call_s)
    return max(min(repeats, min_repeats), min(repeats, affordable))


def time_calls(step: Callable[[], Any], sync: Callable[[Any], None], n: int) -> list[float]:
    """Wall-clock seconds of ``n`` calls, each one waited for with ``sync`` before the clock stops."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = step()
        sync(out)
        times.append(time.perf_counter() - t0)
        del out
    return times


@dataclasses.dataclass
class Timings:
    """Seconds per call of one candidate: wall-clock time and this process's CPU time
    (``time.process_time``: what the call cost the cores, which other processes on a shared
    machine inflate far less than wall time)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    def add(self, call: Callable[[], Any]) -> None:
        """Time one call of ``call`` (which must wait for its own result)."""
        c0, t0 = time.process_time(), time.perf_counter()
        call()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)

    @property
    def wall_stats(self) -> Stats:
        return summarize(self.wall)

    @property
    def cpu_stats(self) -> Stats:
        return summarize(self.cpu)


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timings]:
    """Each call once untimed (it compiles), then ``repeats`` rounds of every call in turn.

    For comparing candidates on a shared machine: a disturbance hits every candidate of a
    round alike instead of one candidate's whole series. Round r starts at candidate
    r mod n, so that no candidate always runs first (after the others' memory traffic) or
    last. Each call must wait for its result.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for call in calls.values():
        call()
    names = list(calls)
    timings = {name: Timings() for name in names}
    for r in range(repeats):
        start = r % len(names)
        for name in names[start:] + names[:start]:
            timings[name].add(calls[name])
    return timings


@dataclasses.dataclass
class Workload:
    """One row's computation, ready to time (compiled already, if it is compiled).

    ``step`` runs one call and returns something to wait for; ``sync`` waits for it.
    ``kernel_probe`` runs one call (the first warm-up call) and returns a label of the
    attention kernel that ran, or None; ``memory_probe`` runs one call while measuring memory
    and returns ``(peak bytes or None, how it was measured)``.
    ``compile_s_cold`` / ``compile_s_warm`` are the runner's compile times; when
    ``compile_includes_one_call`` is true they were taken as the first call's time (torch.compile
    compiles lazily, inside the first call) and one steady-state call is subtracted here.
    """

    step: Callable[[], Any]
    sync: Callable[[Any], None]
    kernel_probe: Callable[[], str | None] | None = None
    memory_probe: Callable[[], tuple[int | None, str]] | None = None
    compile_s_cold: float | None = None
    compile_s_warm: float | None = None
    compile_includes_one_call: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Measurement:
    stats: Stats
    compile_s_cold: float | None
    compile_s_warm: float | None
    peak_memory_bytes: int | None
    memory_method: str
    kernel: str | None


def measure(
    work: Workload, *, warmup: int, repeats: int, min_repeats: int = 3, budget_s: float = 10.0
) -> Measurement:
    """Warm up, probe, then time ``work`` (see the module docstring for the protocol)."""
    kernel = None
    if work.kernel_probe is not None:
        kernel = work.kernel_probe()  # counts as the first warm-up call
        warmup -= 1
    for _ in range(warmup):
        work.sync(work.step())
    peak, method = None, "not measured"
    if work.memory_probe is not None:
        peak, method = work.memory_probe()
    # one timed call decides how many more the budget allows
    first = time_calls(work.step, work.sync, 1)
    n = repeats_within_budget(first[0], repeats=repeats, min_repeats=min_repeats, budget_s=budget_s)
    stats = summarize(first + time_calls(work.step, work.sync, n - 1))

    def net(compile_s: float | None) -> float | None:
        if compile_s is None or not work.compile_includes_one_call:
            return compile_s
        return max(0.0, compile_s - stats.median)

    return Measurement(
        stats=stats,
        compile_s_cold=net(work.compile_s_cold),
        compile_s_warm=net(work.compile_s_warm),
        peak_memory_bytes=peak,
        memory_method=method,
        kernel=kernel,
    )


def timed(fn: Callable[[], Any], sync: Callable[[Any], None]) -> tuple[Any, float]:
    """``(fn's result, seconds)`` for one call waited for with ``sync``."""
    t0 = time.perf_counter()
    out = fn()
    sync(out)
    return out, time.perf_counter() - t0


# --- resident memory on CPUs -----------------------------------------------------------------


def _rss_reader() -> Callable[[], int] | None:
    """A fast reader of this process's resident set size in bytes (Linux), or None."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except (OSError, ValueError, AttributeError):
        return None

    def read() -> int:
        return int(os.pread(fd, 200, 0).split()[1]) * page

    return read


_READ_RSS = _rss_reader()


def _malloc_trim() -> None:
    """Give memory that glibc's malloc holds but does not use back to the system."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak growth of the resident set size while the ``with`` block runs (CPU memory).

    Before the block: garbage collection and ``malloc_trim(0)``, so that memory freed by
    earlier calls is returned to the system and has to be touched again to count; then a
    background thread samples ``/proc/self/statm`` every ``interval_s``. The result
    (``peak_bytes``) is the highest sample minus the level before the block: the memory the
    call itself needed (activations, gradients, temporaries, outputs), not the parameters
    and optimizer state that existed before it. Approximate: peaks shorter than the interval
    can be missed, and allocator caching can hide reuse. ``None`` where ``/proc`` is absent.
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._max = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        if _READ_RSS is None:
            return self
        gc.collect()
        _malloc_trim()
        self._base = _READ_RSS()
        self._max = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        assert _READ_RSS is not None
        while not self._stop.is_set():
            self._max = max(self._max, _READ_RSS())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        assert _READ_RSS is not None
        self._max = max(self._max, _READ_RSS())
        self.peak_bytes = self._max - self._base
