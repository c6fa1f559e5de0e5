"""Mesh rows: ``python -m benchmarks --mesh ...`` runs each train-step row on the mesh too,
in child processes, timed by the same harness into the same rows. Tiny configs, one timed
call; no timing is asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.mesh import parse_mesh
from benchmarks.schema import Row
from benchmarks.suites import Case

ROOT = Path(__file__).resolve().parent.parent


def _mesh_run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[Row]]:
    cmd = [sys.executable, "-m", "benchmarks", "--suite", "mesh", "--config", "tiny"]
    cmd += ["--batch", "4", "--seq-lens", "8", "--device", "cpu", "--warmup", "0"]
    cmd += ["--repeats", "1", "--no-plots", "--out", str(tmp_path), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    return done, [Row.from_dict(r) for r in doc["rows"]]


def test_jax_mesh_rows_sit_beside_the_one_device_row_with_memory_and_collectives(tmp_path):
    done, rows = _mesh_run(
        tmp_path, "--frameworks", "jax", "--modes", "compiled", "--mesh", "data=2,fsdp"
    )
    assert [(r.mesh, r.devices, r.batch) for r in rows] == [("", 1, 4), ("data=2,fsdp", 2, 4)]
    one, sharded = rows
    assert sharded.phase == one.phase == "train_step"
    assert sharded.memory_method == "xla_buffer_assignment" and sharded.peak_memory_bytes > 0
    assert sharded.collective_bytes > 0 and one.collective_bytes is None
    assert sharded.parity_max_abs_diff is None and "test_parallel.py" in sharded.notes
    assert sharded.compile_s_cold is not None
    assert "mesh" in done.stdout.splitlines()[0]  # the table's mesh column
    assert "not a speedup" in done.stdout


@pytest.mark.slow
def test_torch_mesh_rows_run_eager_over_one_gloo_process_per_device(tmp_path):
    _, rows = _mesh_run(tmp_path, "--frameworks", "torch", "--modes", "eager", "--mesh", "data=2")
    assert [(r.mode, r.mesh, r.devices) for r in rows] == [("eager", "", 1), ("eager", "data=2", 2)]
    sharded = rows[-1]
    assert sharded.memory_method == "rss_sampled" and sharded.threads >= 1
    assert sharded.collective_bytes > 0


def test_runners_say_why_they_skip_a_mesh_row():
    from benchmarks.run_jax import JaxRunner
    from benchmarks.run_torch import TorchRunner

    mesh = parse_mesh("data=2")
    case = Case("torch", "ours-fused", "compiled", "train_step", "cpu", "float32", 4, 8, mesh)
    torch_runner, jax_runner = TorchRunner("cpu", threads=1), JaxRunner("cpu")
    assert torch_runner.unsupported(case) == "a sharded PyTorch model is benchmarked eager only"
    assert torch_runner.unsupported(dataclasses.replace(case, mode="eager")) is None
    assert jax_runner.unsupported(dataclasses.replace(case, framework="jax")) is None
    native = dataclasses.replace(case, variant="native", mode="eager")
    reason = "the sharding plan covers our encoder only, not native"
    assert torch_runner.unsupported(native) == reason
    assert jax_runner.unsupported(dataclasses.replace(native, framework="jax")) == reason
