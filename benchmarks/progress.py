"""Progress of a run on stderr: a bar with the rows done and an estimate of the time left
(``rich``), with the log lines printed above it.

The estimate weighs each row by its analytic FLOPs (``shared/flops.py``) times the calls it
makes, plus a fixed share for the per-row set-up and, in compiled rows, compilation: rows of
a sweep differ in cost by orders of magnitude, so counting rows would mislead. It is an
estimate; the elapsed time is exact. Where stderr is not a terminal, only the log lines are
written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from benchmarks.suites import Case
from shared.config import EncoderConfig
from shared.flops import encoder_phase_flops

__all__ = ["RunProgress", "case_weight"]

# a compiled row's compilation, and every row's set-up, in units of the row's own calls
_COMPILE_CALLS = {"cpu": 10.0, "gpu": 200.0, "tpu": 200.0}
_SETUP_CALLS = 2.0


def case_weight(case: Case, cfg: EncoderConfig, *, calls: int) -> float:
    """Relative cost of ``case``: FLOPs of one call times the calls it makes (``calls``
    timed and untimed, plus set-up and compilation), eager JAX counted at twice the time."""
    flops = encoder_phase_flops(case.phase, cfg, case.batch, case.seq_len)
    n = calls + _SETUP_CALLS
    if case.mode == "compiled":
        n += _COMPILE_CALLS.get(case.device, 10.0)
    if case.framework == "jax" and case.mode == "eager":
        n *= 2
    return float(flops) * n * case.mesh.devices


class RunProgress:
    """``with RunProgress(cfg, calls=...) as progress: run_cases(..., progress=progress)``."""

    def __init__(self, cfg: EncoderConfig, *, calls: int, console: Console | None = None):
        self.cfg = cfg
        self.calls = calls
        self.console = console or Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self._bar = Progress(
            TextColumn("{task.fields[rows]}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("elapsed, about"),
            TimeRemainingColumn(),
            TextColumn("left"),
            console=self.console,
            transient=True,
        )
        self._task = self._bar.add_task("work", total=None, start=False, rows="")
        self._weights: dict[Case, float] = {}
        self._done = 0

    def __enter__(self) -> RunProgress:
        if self.console.is_terminal:  # off a terminal: the log lines only
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar.live.is_started:
            self._bar.stop()

    def log(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def start(self, cases: Sequence[Case]) -> None:
        """The cases about to run (their weights make the estimate)."""
        self._weights = {c: case_weight(c, self.cfg, calls=self.calls) for c in cases}
        self._done = 0
        total = sum(self._weights.values()) or 1.0
        self._bar.update(self._task, total=total, completed=0, rows=self._rows_text())
        self._bar.start_task(self._task)

    def advance(self, case: Case) -> None:
        """``case`` has ended (measured or failed)."""
        self._done += 1
        self._bar.update(self._task, advance=self._weights.get(case, 0.0), rows=self._rows_text())

    def _rows_text(self) -> str:
        return f"rows {self._done}/{len(self._weights)}"
