"""``benchmarks/gpu_check.sh``: the plan it prints, and what it does without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


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
    assert names == [
        "versions",
        "parity-gpu",
        "bert-base-bf16-sweep",
        "bert-large-bf16-train-step",
        "modernbert-base-bf16",
        "mesh-seq2",
        "peers-bf16",
    ]
    assert "--device gpu" in plan[1] and "ours-math,ours-fused,ours-flash" in plan[2]
    assert "parity_tests/test_masked_keys.py" in plan[1]  # cuDNN with a padding mask
    assert "--batch 32 --seq-lens 512" in plan[3]
    modern = plan[4]  # ModernBERT-base: windowed flash against fused, both frameworks
    assert "--config modernbert-base --dtype bfloat16 --variants ours-fused,ours-flash" in modern
    assert "--frameworks" not in modern and "--seq-lens 2048,8192" in modern
    assert "--mesh seq=2 --mesh seq=2,context=all_gather" in plan[5]
    assert "--frameworks torch --variants ours-fused,hf" in plan[6]
    assert "--frameworks jax --variants ours-fused,keras" in plan[6]
    limits = {
        n: int(line.split("(limit ")[1].split("s)")[0]) for n, line in zip(names, plan, strict=True)
    }
    assert sum(s for n, s in limits.items() if n != "mesh-seq2") <= 9.5 * 60
    assert limits["mesh-seq2"] <= 150  # only with more than one GPU
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
    assert len(skipped) == 6 and all("no GPU" in line for line in skipped)
    assert skipped[4].startswith("skip: [mesh-seq2]")


def test_gpu_check_runs_the_seq_mesh_step_only_with_more_than_one_gpu(tmp_path):
    """The step's guard, with a stand-in python whose torch and jax see one GPU: every
    other step runs (the stand-in prints its arguments), the mesh step is skipped."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = - ]; then\n'
        "  code=$(cat)\n"
        '  case "$code" in *device_count*) echo "needs more than one GPU, got 1" >&2; exit 1;; esac\n'
        "  exit 0\n"
        "fi\n"
        'echo ran: "$@"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--out", str(tmp_path / "gc")],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = (tmp_path / "gc" / "skipped.txt").read_text().splitlines()
    assert skipped == ["skip: [mesh-seq2] needs more than one GPU, got 1"]
    assert "run: [peers-bf16]" in done.stdout and "run: [mesh-seq2]" not in done.stdout
