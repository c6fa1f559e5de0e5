"""Running a list of cases: peaks first, then for each torch/jax pair a parity check, then
every row of the pair timed (one device in this process; a mesh in child processes,
``benchmarks.mesh``; a keras-hub row in a child process whose ``KERAS_BACKEND`` is its
framework, ``benchmarks.peers``), with progress printed as it goes. A peer's parity is its
output against ours in the same framework."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from benchmarks import mesh as meshes
from benchmarks import peers
from benchmarks.harness import Measurement, Workload, measure
from benchmarks.peaks import MeasuredPeak, datasheet_tflops
from benchmarks.schema import Row
from benchmarks.suites import Case
from benchmarks.variants import PARITY_REFERENCE, variant
from shared import reference
from shared.config import EncoderConfig
from shared.flops import encoder_phase_flops
from shared.tolerances import max_abs_diff, tolerance

__all__ = [
    "Parity",
    "RunResult",
    "RunSettings",
    "Runner",
    "make_input_ids",
    "make_row",
    "measure_case",
    "run_cases",
]


class Runner(Protocol):
    """What ``run_torch.TorchRunner`` and ``run_jax.JaxRunner`` provide."""

    framework: str

    def unsupported(self, case: Case) -> str | None: ...
    def forward_output(
        self, variant: str, cfg: EncoderConfig, weights: dict, dtype: str, ids: np.ndarray
    ) -> np.ndarray: ...
    def matmul_peak(self, dtype: str) -> MeasuredPeak: ...
    def workload(
        self, case: Case, cfg: EncoderConfig, weights: dict, ids: np.ndarray
    ) -> Workload: ...
    def release(self) -> None: ...
    def warm_up_compiler(self) -> float: ...


@dataclasses.dataclass(frozen=True)
class RunSettings:
    config_name: str
    warmup: int
    repeats: int
    min_repeats: int
    budget_s: float
    seed: int
    tf32: bool
    threads: int | None
    warm_compile: bool = True  # compile a second time from warm caches (compiled rows)
    cache_dir: str | None = None  # the run's compile caches, for child processes (meshes)


@dataclasses.dataclass(frozen=True)
class Parity:
    max_abs_diff: float | None
    ok: bool | None
    note: str = ""


@dataclasses.dataclass
class RunResult:
    rows: list[Row] = dataclasses.field(default_factory=list)
    peaks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    compiler_warmup_s: dict[str, float] = dataclasses.field(default_factory=dict)
    interrupted: bool = False


def make_input_ids(cfg: EncoderConfig, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """The (B, T) int32 token ids both frameworks get for this shape (no padding)."""
    rng = np.random.default_rng([seed, batch, seq_len])
    return rng.integers(0, cfg.vocab_size, (batch, seq_len), dtype=np.int32)


def _case_dict(case: Case) -> dict[str, Any]:
    return {
        "framework": case.framework,
        "variant": case.variant,
        "mode": case.mode,
        "phase": case.phase,
        "dtype": case.dtype,
        "batch": case.batch,
        "seq_len": case.seq_len,
        "mesh": case.mesh.name,
        "remat": case.remat,
    }


class Progress(Protocol):
    """What :func:`run_cases` reports to while it runs (``benchmarks.progress``)."""

    def log(self, line: str) -> None: ...
    def start(self, cases: Sequence[Case]) -> None: ...
    def advance(self, case: Case) -> None: ...


def run_cases(
    cases: Sequence[Case],
    *,
    cfg: EncoderConfig,
    runners: dict[str, Runner],
    settings: RunSettings,
    device_names: dict[str, str],
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Measure every case; a failing case is recorded and the run goes on.

    Lines go to ``progress.log`` (or ``log``, or stderr); ``progress`` is told each case as
    it ends. Ctrl-C stops the run; what was measured so far is returned (``interrupted``).
    """
    if progress is not None:
        log = progress.log
    log = log or _stderr
    result = RunResult()
    runnable = []
    for case in cases:
        reason = "framework not available" if case.framework not in runners else None
        reason = reason or runners[case.framework].unsupported(case)
        if reason:
            result.skipped.append({**_case_dict(case), "reason": reason})
        else:
            runnable.append(case)
    for skip in _summarise_skips(result.skipped):
        log(f"skipping {skip}")

    weights = reference.init_weights(cfg, settings.seed)  # format v1, float32
    started = time.perf_counter()
    try:
        peaks = _measure_peaks(runnable, runners, log)
        result.peaks = [{**dataclasses.asdict(p), "tflops": p.tflops} for p in peaks.values()]
        for framework in dict.fromkeys(c.framework for c in runnable if c.mode == "compiled"):
            seconds = runners[framework].warm_up_compiler()
            result.compiler_warmup_s[framework] = seconds
            log(f"{framework} compiler start-up (a throwaway function): {seconds:.1f} s")
        if progress is not None:  # the estimate starts with the rows
            progress.start(runnable)
        done = 0
        for _, pair in itertools.groupby(runnable, key=lambda c: c.pair_key):
            group = list(pair)
            ids = make_input_ids(cfg, group[0].batch, group[0].seq_len, settings.seed)
            parity = _parity(group, cfg, weights, ids, runners, log)
            for case in group:
                row_parity = parity.get(case.framework, Parity(None, None))
                done += 1
                elapsed = time.perf_counter() - started
                log(f"[{done:>3}/{len(runnable)} {elapsed:6.0f}s] {case.label()} ...")
                try:
                    if case.mesh.devices > 1:
                        m = meshes.run_sharded(case, cfg, settings)
                    elif variant(case.variant).own_process:
                        m, notes, checked = peers.run_in_child(case, cfg, settings)
                        m = (m, notes)
                        row_parity = _peer_parity(case, checked, log)
                    else:
                        m = measure_case(case, cfg, weights, ids, runners[case.framework], settings)
                except Exception as e:  # one row failing (out of memory, say) ends only that row
                    result.failures.append(
                        {**_case_dict(case), "error": f"{type(e).__name__}: {e}"}
                    )
                    log(f"      failed: {type(e).__name__}: {str(e)[:300]}")
                    continue
                finally:
                    runners[case.framework].release()
                    if progress is not None:
                        progress.advance(case)
                row = make_row(case, m, cfg, settings, row_parity, peaks, device_names)
                result.rows.append(row)
                log("      " + _progress_line(row))
    except KeyboardInterrupt:
        result.interrupted = True
        log("interrupted: writing what was measured so far")
    return result


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summarise_skips(skipped: list[dict[str, Any]]) -> list[str]:
    counts: dict[tuple[str, str], int] = {}
    for s in skipped:
        counts[(s["framework"], s["reason"])] = counts.get((s["framework"], s["reason"]), 0) + 1
    return [f"{n} {fw} row(s): {reason}" for (fw, reason), n in counts.items()]


def _measure_peaks(
    cases: Sequence[Case], runners: dict[str, Runner], log: Callable[[str], None]
) -> dict[tuple[str, str], MeasuredPeak]:
    peaks = {}
    for framework, dtype in dict.fromkeys((c.framework, c.dtype) for c in cases):
        peak = runners[framework].matmul_peak(dtype)
        runners[framework].release()
        peaks[(framework, dtype)] = peak
        log(
            f"matmul peak {framework:5} {dtype:8} n={peak.n}: {peak.tflops * 1e3:8.1f} GFLOP/s "
            f"({peak.median_s * 1e3:.1f} ms)"
        )
    return peaks


def _parity(
    group: list[Case],
    cfg: EncoderConfig,
    weights: dict,
    ids: np.ndarray,
    runners: dict[str, Runner],
    log: Callable[[str], None],
) -> dict[str, Parity]:
    """The parity of the group's rows, per framework. Ours and native: both frameworks'
    forward outputs for the group's variant, dtype and shape, compared. A peer: its output
    against ours in the same framework (a peer in its own process: measured there)."""
    frameworks = {c.framework for c in group}
    case = group[0]
    v = variant(case.variant)
    if case.mesh.devices > 1:
        test = "test_context_parallel.py" if case.mesh.sizes["seq"] > 1 else "test_parallel.py"
        note = f"sharded: parity_tests/{test} checks it"
        return dict.fromkeys(frameworks, Parity(None, None, note))
    if v.own_process:
        return {}  # measured in each row's child process
    if v.package is not None:
        return {
            fw: _peer_parity_here(case, fw, cfg, weights, ids, runners, log) for fw in frameworks
        }
    if frameworks != {"torch", "jax"}:
        return dict.fromkeys(frameworks, Parity(None, None, "no torch/jax pair to compare"))
    try:
        out = {
            fw: runners[fw].forward_output(case.variant, cfg, weights, case.dtype, ids)
            for fw in ("torch", "jax")
        }
    except Exception as e:
        log(f"      parity check failed: {type(e).__name__}: {str(e)[:300]}")
        failed = Parity(None, None, f"parity check failed: {type(e).__name__}")
        return dict.fromkeys(frameworks, failed)
    finally:
        for fw in ("torch", "jax"):
            runners[fw].release()
    diff = max_abs_diff(out["jax"], out["torch"])
    bound = tolerance(case.dtype, case.device).bound(out["torch"])
    ok = bool(np.all(np.isfinite(out["jax"]))) and diff <= bound
    log(
        f"parity {case.variant} {case.dtype} B={case.batch} T={case.seq_len}: "
        f"max |torch - jax| = {diff:.2e} ({'within' if ok else 'OUTSIDE'} the tolerance {bound:.1e})"
    )
    return dict.fromkeys(frameworks, Parity(diff, ok))


def _peer_parity_here(
    case: Case,
    framework: str,
    cfg: EncoderConfig,
    weights: dict,
    ids: np.ndarray,
    runners: dict[str, Runner],
    log: Callable[[str], None],
) -> Parity:
    """A peer's output against ours (``PARITY_REFERENCE``), both built in this process."""
    try:
        checked = peers.parity(runners[framework], case.variant, cfg, weights, case.dtype, ids)
    except Exception as e:
        log(f"      parity check failed: {type(e).__name__}: {str(e)[:300]}")
        return Parity(None, None, f"parity check failed: {type(e).__name__}")
    return _peer_parity(dataclasses.replace(case, framework=framework), checked, log)


def _peer_parity(case: Case, checked: dict[str, Any], log: Callable[[str], None]) -> Parity:
    diff, ok, bound = checked["max_abs_diff"], checked["ok"], checked["bound"]
    log(
        f"parity {case.framework} {case.variant} {case.dtype} B={case.batch} "
        f"T={case.seq_len}: max |{case.variant} - {PARITY_REFERENCE}| = {diff:.2e} "
        f"({'within' if ok else 'OUTSIDE'} the tolerance {bound:.1e})"
    )
    return Parity(diff, ok, f"parity: against {PARITY_REFERENCE} ({case.framework})")


def measure_case(
    case: Case,
    cfg: EncoderConfig,
    weights: dict,
    ids: np.ndarray,
    runner: Runner,
    settings: RunSettings,
) -> tuple[Measurement, list[str]]:
    """``case`` built by ``runner`` and timed by the harness: ``(measurement, notes)``."""
    work = runner.workload(case, cfg, weights, ids, warm_compile=settings.warm_compile)
    m = measure(
        work,
        warmup=settings.warmup,
        repeats=settings.repeats,
        min_repeats=settings.min_repeats,
        budget_s=settings.budget_s,
    )
    notes = list(work.notes)
    del work
    gc.collect()
    return m, notes


def make_row(
    case: Case,
    measured: tuple[Measurement, list[str]],
    cfg: EncoderConfig,
    settings: RunSettings,
    parity: Parity,
    peaks: dict[tuple[str, str], MeasuredPeak],
    device_names: dict[str, str],
) -> Row:
    """One row of the results (fields: :class:`benchmarks.schema.Row`)."""
    m, notes = measured
    median_s = m.stats.median
    flops = encoder_phase_flops(case.phase, cfg, case.batch, case.seq_len)
    tflops = flops / median_s / 1e12
    # host devices of one CPU share its cores (and its measured peak); accelerators add up
    scale = 1 if case.device == "cpu" else case.mesh.devices
    peak = peaks.get((case.framework, case.dtype))
    peak_tflops = peak.tflops * scale if peak else None
    best_gemm = max((p.tflops for (_, dt), p in peaks.items() if dt == case.dtype), default=None)
    device_name = device_names.get(case.framework)
    datasheet = datasheet_tflops(device_name, case.dtype, tf32=settings.tf32)
    datasheet = datasheet * scale if datasheet else None
    notes = list(notes)
    if parity.note:
        notes.append(parity.note)
    if m.stats.iqr > 0.1 * median_s:
        notes.append(f"noisy: IQR {100 * m.stats.iqr / median_s:.0f}% of the median")
    if case.mode == "compiled" and case.framework == "torch":
        notes.append("compiled per shape (dynamic=False)")
    return Row(
        framework=case.framework,
        implementation=case.implementation,
        backend=case.backend,
        kernel=m.kernel,
        mode=case.mode,
        phase=case.phase,
        device=case.device,
        device_name=device_name,
        dtype=case.dtype,
        precision="tf32" if settings.tf32 else "float32",
        batch=case.batch,
        seq_len=case.seq_len,
        config=settings.config_name,
        median_ms=median_s * 1e3,
        spread_ms=m.stats.iqr * 1e3,
        min_ms=m.stats.minimum * 1e3,
        repeats=m.stats.n,
        tokens_per_s=case.batch * case.seq_len / median_s,
        flops=flops,
        tflops=tflops,
        peak_tflops_measured=peak_tflops,
        utilization=tflops / peak_tflops if peak_tflops else None,
        utilization_best_gemm=tflops / (best_gemm * scale) if best_gemm else None,
        peak_tflops_datasheet=datasheet,
        utilization_datasheet=tflops / datasheet if datasheet else None,
        peak_memory_bytes=m.peak_memory_bytes,
        memory_method=m.memory_method,
        compile_s_cold=m.compile_s_cold,
        compile_s_warm=m.compile_s_warm,
        parity_max_abs_diff=parity.max_abs_diff,
        parity_ok=parity.ok,
        threads=_threads(case, settings),
        notes="; ".join(notes),
        mesh=case.mesh.name,
        devices=case.mesh.devices,
        collective_bytes=meshes.collective_bytes(
            cfg, case.mesh, batch=case.batch, seq_len=case.seq_len
        ),
        remat=case.remat,
    )


def _threads(case: Case, settings: RunSettings) -> int | None:
    if case.framework != "torch" or settings.threads is None:
        return None
    if case.device == "cpu":  # one process per device shares the cores
        return max(1, settings.threads // case.mesh.devices)
    return settings.threads


def _progress_line(row: Row) -> str:
    parts = [
        f"{row.median_ms:10.2f} ms ± {row.spread_ms:.2f} (n={row.repeats})",
        f"{row.tflops * 1e3:7.1f} GFLOP/s",
    ]
    if row.utilization is not None:
        parts.append(f"{100 * row.utilization:5.1f}% of measured peak")
    if row.compile_s_cold is not None:
        warm = "" if row.compile_s_warm is None else f" / {row.compile_s_warm:.1f}s warm"
        parts.append(f"compile {row.compile_s_cold:.1f}s cold{warm}")
    if row.kernel:
        parts.append(f"kernel {row.kernel}")
    return ", ".join(parts)
