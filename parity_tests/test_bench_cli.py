"""The command line ``python -m benchmarks``: help, usage errors (one line, exit 2, before
torch or JAX is imported), an absent device, and small runs end to end. No timing asserted."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cli, schema

REPO = Path(__file__).resolve().parent.parent


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
    for name in ("quick", "standard", "full", "mesh", "bert-base", "bert-large", "ours-flash"):
        assert name in text


def _benchmarks(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
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
    assert set(doc["environment"]["framework_reports"]) == {"torch", "jax"}
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
    assert "verdict" in done.stdout and "±IQR" in done.stdout  # the table and verdict
    table = done.stdout[: done.stdout.index("\nphase: fwd forward")]
    assert max(len(line) for line in table.splitlines()) <= 120
    assert "Profiler record function" not in done.stderr


@pytest.mark.slow
def test_cli_smoke_run_compiled_reports_cold_and_warm_compile_times(tmp_path):
    done = _benchmarks(
        *("--suite", "standard", "--config", "tiny", "--seq-lens", "16", "--batch", "2"),
        *("--device", "cpu", "--repeats", "2", "--warmup", "0", "--threads", "1"),
        *("--modes", "compiled"),
        *("--variants", "ours-math", "--phases", "forward", "--no-plots"),
        *("--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = _check_results(tmp_path, expected_rows=2)
    for row in doc["rows"]:
        assert row["compile_s_cold"] is not None and row["compile_s_warm"] is not None
    assert not list(tmp_path.glob("*.png"))


def _imports_after(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``cli.main(args)`` in a fresh process; its exit and which frameworks it imported."""
    code = (
        "import sys\n"
        "from benchmarks import cli\n"
        "try:\n"
        f"    status = cli.main({list(args)!r})\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'jax') if m in sys.modules))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    imported = done.stdout.strip().splitlines()[-1].removeprefix("IMPORTED ")
    return done, set(json.loads(imported.replace("'", '"')))


def test_help_answers_without_importing_torch_or_jax():
    done, imported = _imports_after("--help")
    assert done.returncode == 0 and "--mesh" in done.stdout
    assert imported == set()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--device", "cpu", "--mesh", "data=3", "--batch", "4"),
            "--mesh data=3: batch=4 is not divisible by the mesh's data=3",
        ),
        (
            ("--device", "cpu", "--suite", "mesh", "--config", "tiny", "--mesh", "model=3"),
            "--mesh model=3:",
        ),
        (("--device", "cpu", "--mesh", "data=2", "--phases", "forward"), "has none: add --phases"),
        (("--device", "cpu", "--tf32"), "--tf32 applies to GPUs only"),
        (
            (
                "--config",
                "no-such-model",
            ),
            "neither a preset",
        ),
        (("--variants", "ours-math,tf"), "expected a comma-separated list of ours-math"),
        (
            ("--device", "cpu", "--variants", "ours-fused,keras"),
            "--variants keras: keras-hub's BertBackbone needs positional='learned'",
        ),
        (
            ("--device", "cpu", "--suite", "standard", "--variants", "keras"),
            "needs activation='gelu_tanh', got activation='gelu'",
        ),
        (
            (
                "--device",
                "cpu",
                "--config",
                "bert-base-tanh",
                "--variants",
                "hf",
                "--remat",
                "block",
            ),
            "--remat block applies to rows with a backward (train_step, forward_backward) of an",
        ),
        (
            ("--device", "cpu", "--phases", "forward", "--remat", "none,attention"),
            "--remat attention applies to rows with a backward",
        ),
        (("--mesh", "pipe=2"), "expected data=N,model=N,seq=N[,fsdp]"),
        (("--out", "README.md"), "cannot write folder README.md: it is a file"),
        (("--mesh", "data=3", "--batch", "8"), "batch=8 is not divisible by the mesh's data=3"),
    ],
)
def test_a_bad_command_line_exits_2_with_one_line_before_importing_a_framework(args, message):
    done, imported = _imports_after(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].startswith("python -m benchmarks: error: ")
    assert imported == set()
