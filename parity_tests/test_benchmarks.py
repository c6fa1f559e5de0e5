"""The benchmark harness: statistics, FLOP counts, suites, the results schema and the command
line. No test asserts anything about how fast something runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_impl
from benchmarks import cli, peaks, plots, report, schema, suites
from benchmarks.harness import PeakRss, Workload, measure, repeats_within_budget, summarize
from benchmarks.suites import SUITES, Case, Selection, expand
from shared import EncoderConfig, reference
from shared.flops import forward_flops, layer_forward_flops, matmul_flops, phase_flops

REPO = Path(__file__).resolve().parent.parent


# --- statistics ----------------------------------------------------------------------------


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


# --- FLOP counts ---------------------------------------------------------------------------


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


# --- peaks ---------------------------------------------------------------------------------


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


# --- suites --------------------------------------------------------------------------------


def _cpu_selection(**kw) -> Selection:
    return Selection(frameworks=("torch", "jax"), device="cpu", **kw)


def test_every_pair_is_adjacent_torch_first_so_one_parity_check_serves_it():
    cases = expand(SUITES["quick"], _cpu_selection())
    keys = [c.pair_key for c in cases]
    for key in set(keys):
        first, last = keys.index(key), len(keys) - 1 - keys[::-1].index(key)
        group = cases[first : last + 1]
        assert all(c.pair_key == key for c in group)
        frameworks = [c.framework for c in group]
        assert frameworks == sorted(frameworks, key=["torch", "jax"].index)


def test_standard_suite_shrinks_the_batch_as_sequences_grow():
    cases = expand(SUITES["standard"], _cpu_selection())
    shapes = sorted({(c.seq_len, c.batch) for c in cases})
    assert shapes == [(128, 8), (256, 4), (512, 2), (1024, 1), (2048, 1)]
    eager_train = {c.seq_len for c in cases if c.phase == "train_step" and c.mode == "eager"}
    assert eager_train == {128, 256, 512}
    assert {c.variant for c in cases} == {"ours-math", "ours-fused", "ours-flash", "native"}


def test_command_line_choices_replace_the_suites_sweeps_by_their_cross_product():
    cases = expand(
        SUITES["standard"],
        _cpu_selection(phases=("forward_backward",), modes=("eager",), batch=3, seq_lens=(16,)),
    )
    assert {(c.phase, c.mode, c.batch, c.seq_len) for c in cases} == {
        ("forward_backward", "eager", 3, 16)
    }
    assert len(cases) == 2 * 4  # frameworks x variants (math, fused, flash, native)


def test_configs_come_from_presets_or_json_files(tmp_path):
    name, cfg = suites.load_config("bert-base")
    assert (name, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers) == (
        "bert-base",
        768,
        12,
        3072,
        6,
    )
    large = suites.PRESETS["bert-large"]
    assert (large.d_model, large.n_heads, large.d_ff, large.n_layers) == (1024, 16, 4096, 24)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"d_model": 32, "n_heads": 2, "d_ff": 64, "dropout": 0.0}))
    name, cfg = suites.load_config(str(path))
    assert (name, cfg.d_model) == ("mine", 32)
    with pytest.raises(ValueError, match="neither a preset"):
        suites.load_config("no-such-model")


def test_max_len_grows_to_the_longest_sequence():
    cfg = suites.PRESETS["bert-base"]
    case = Case("torch", "ours-fused", "eager", "forward", "cpu", "float32", 1, 2048)
    assert suites.max_len_for(cfg, [case]).max_len == 2048
    assert suites.max_len_for(cfg, []).max_len == cfg.max_len


# --- results: schema, table, files ---------------------------------------------------------


def _row(**changes) -> dict:
    row = {
        "framework": "torch",
        "implementation": "ours",
        "backend": "fused",
        "kernel": "sdpa-flash-cpu",
        "mode": "eager",
        "phase": "forward",
        "device": "cpu",
        "device_name": "some cpu",
        "dtype": "float32",
        "precision": "float32",
        "batch": 2,
        "seq_len": 16,
        "config": "tiny",
        "median_ms": 1.5,
        "spread_ms": 0.1,
        "min_ms": 1.4,
        "repeats": 5,
        "tokens_per_s": 21333.3,
        "flops": 1000,
        "tflops": 1e-6,
        "peak_tflops_measured": 0.1,
        "utilization": 1e-5,
        "utilization_best_gemm": 5e-6,
        "peak_tflops_datasheet": None,
        "utilization_datasheet": None,
        "peak_memory_bytes": 2**20,
        "memory_method": "rss_sampled",
        "compile_s_cold": None,
        "compile_s_warm": None,
        "parity_max_abs_diff": 1e-6,
        "parity_ok": True,
        "threads": 2,
        "notes": "",
    }
    return {**row, **changes}


def test_row_schema_accepts_a_complete_row_and_names_what_is_wrong():
    schema.validate_row(_row())
    with pytest.raises(ValueError, match="missing \\['notes'\\]"):
        schema.validate_row({k: v for k, v in _row().items() if k != "notes"})
    with pytest.raises(ValueError, match="median_ms"):
        schema.validate_row(_row(median_ms="fast"))
    with pytest.raises(ValueError, match="batch"):
        schema.validate_row(_row(batch=True))  # a bool is not a batch size


def test_table_prints_one_line_per_row_and_marks_parity_outside_tolerance():
    text = report.format_table([_row(), _row(framework="jax", parity_ok=False)])
    lines = text.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert "median ms" in lines[0]
    assert lines[3].endswith("1.0e-06!")


def test_plots_are_written_for_a_sequence_sweep(tmp_path):
    rows = [
        _row(framework=fw, mode=mode, seq_len=t, batch=8 // (t // 16), median_ms=t / 10)
        for fw in ("torch", "jax")
        for mode in ("eager", "compiled")
        for t in (16, 32, 64)
    ]
    written = plots.plot_all(rows, tmp_path)
    names = {p.name for p in written}
    assert {"latency_vs_seq_len.png", "throughput.png", "memory_vs_seq_len.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written)


# --- the command line ----------------------------------------------------------------------


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--device",
        "--suite",
        "--config",
        "--frameworks",
        "--dtype",
        "--batch",
        "--seq-lens",
        "--out",
        "--repeats",
        "--tf32",
    ):
        assert option in text
    for name in ("quick", "standard", "full", "bert-base", "bert-large"):
        assert name in text


def _benchmarks(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m benchmarks ARGS`` from the repository root, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _absent_device() -> str | None:
    import jax

    def present(kind: str) -> bool:
        try:
            return bool(jax.devices(kind))
        except RuntimeError:
            return False

    gpu = present("gpu") or torch.cuda.is_available()
    for device, here in (("tpu", present("tpu")), ("gpu", gpu)):
        if not here:
            return device
    return None


def test_a_device_that_is_not_present_exits_2_naming_the_ones_that_are(tmp_path):
    device = _absent_device()
    if device is None:
        pytest.skip("this machine has both a GPU and a TPU")
    done = _benchmarks("--device", device, "--out", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert f"device {device!r} is not available" in done.stderr
    assert "cpu (" in done.stderr  # the devices that are present, with their frameworks
    assert not (tmp_path / "results.json").exists()


def test_an_unknown_device_name_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--device", "npu"])
    assert exit_info.value.code == 2


def _check_results(out: Path, expected_rows: int) -> dict:
    doc = json.loads((out / "results.json").read_text())
    schema.validate_results(doc)
    assert len(doc["rows"]) == expected_rows, doc["failures"]
    assert doc["failures"] == []
    with (out / "results.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == expected_rows
    assert list(lines[0]) == list(schema.ROW_FIELDS)
    for row in doc["rows"]:
        assert row["parity_max_abs_diff"] is not None and row["parity_ok"], row
        assert row["median_ms"] > 0 and row["spread_ms"] >= 0
    env = doc["environment"]
    assert env["precision"]["jax_default_matmul_precision"] == "highest"
    assert env["precision"]["torch_cuda_matmul_allow_tf32"] is False
    assert env["command"].startswith("python -m benchmarks")
    return doc


def test_cli_smoke_run_on_a_tiny_config_writes_results_and_plots(tmp_path):
    """Both frameworks, ours and native, forward and train step, eager, on a tiny config
    from a JSON file with BERT's embeddings (learned positions, token types, embedding
    norm), as the bert-* presets have; every file written."""
    config = tmp_path / "tiny-bert.json"
    fields = dict(vocab_size=100, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0)
    bert = dict(positional="learned", type_vocab_size=2, embed_norm=True, layer_norm_eps=1e-12)
    config.write_text(json.dumps({**fields, **bert, "max_len": 16}))
    done = _benchmarks(
        *("--config", str(config), "--seq-lens", "16", "--batch", "2", "--device", "cpu"),
        *("--repeats", "2", "--warmup", "0", "--threads", "1", "--modes", "eager"),
        *("--variants", "ours-fused,native", "--phases", "forward,train_step"),
        *("--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = _check_results(tmp_path, expected_rows=2 * 2 * 2)
    assert {(r["framework"], r["implementation"]) for r in doc["rows"]} == {
        (fw, impl) for fw in ("torch", "jax") for impl in ("ours", "native")
    }
    assert all(r["compile_s_cold"] is None for r in doc["rows"])  # eager rows
    assert {r["config"] for r in doc["rows"]} == {"tiny-bert"}
    for name in ("latency_vs_seq_len.png", "throughput.png", "memory_vs_seq_len.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "median ms" in done.stdout  # the table


@pytest.mark.slow
def test_cli_smoke_run_compiled_reports_cold_and_warm_compile_times(tmp_path):
    done = _benchmarks(
        *("--config", "tiny", "--seq-lens", "16", "--batch", "2", "--device", "cpu"),
        *("--repeats", "2", "--warmup", "0", "--threads", "1", "--modes", "compiled"),
        *("--variants", "ours-math", "--phases", "forward", "--no-plots"),
        *("--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = _check_results(tmp_path, expected_rows=2)
    for row in doc["rows"]:
        assert row["compile_s_cold"] is not None and row["compile_s_warm"] is not None
    assert not list(tmp_path.glob("*.png"))


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


def _gpu_check(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )


def test_gpu_check_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    done = _gpu_check("--dry-run", out=tmp_path / "gc")
    assert done.returncode == 0, done.stderr
    plan = [line for line in done.stdout.splitlines() if line.startswith("plan: ")]
    names = [line.split("]")[0].removeprefix("plan: [") for line in plan]
    assert names == ["versions", "parity-gpu", "bert-base-bf16-sweep", "bert-large-bf16-train-step"]
    assert "--device gpu" in plan[1] and "ours-math,ours-fused,ours-flash" in plan[2]
    assert "parity_tests/test_masked_keys.py" in plan[1]  # cuDNN with a padding mask
    assert "--batch 32 --seq-lens 512" in plan[3]
    assert sum(int(line.split("(limit ")[1].split("s)")[0]) for line in plan) <= 8 * 60
    assert not (tmp_path / "gc").exists()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU fallback needs a machine without a GPU"
)
def test_gpu_check_without_a_gpu_records_versions_and_skips_the_gpu_steps(tmp_path):
    done = _gpu_check(out=tmp_path / "gc")
    assert done.returncode == 0, done.stdout + done.stderr
    versions = (tmp_path / "gc" / "versions.log").read_text()
    assert f"torch         {torch.__version__}" in versions
    skipped = (tmp_path / "gc" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 3 and all("no GPU" in line for line in skipped)


def test_memory_plan_reports_less_temporary_memory_for_flash_than_for_math():
    """XLA's buffer plan of the jitted loss-and-gradient: flash keeps no (B, H, T, T) arrays."""
    from benchmarks import memory_plan

    cfg = EncoderConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=512)
    math = memory_plan.plan(cfg, "math", batch=1, seq_len=512)
    flash = memory_plan.plan(cfg, "flash", batch=1, seq_len=512)
    assert math["arguments"] == flash["arguments"] > 0  # the same parameters
    # math keeps at least one (H, T, T) float32 array of weights for the backward
    assert math["temporaries"] >= 2 * 512 * 512 * 4 > flash["temporaries"]
