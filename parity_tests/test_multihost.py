"""Several processes, as on several hosts: JAX through ``jax.distributed`` (2 processes x 2
host devices), PyTorch through ``torchrun`` (2 nodes x 2 processes), all on localhost.

Each run is a few child processes with timeouts (parity_tests/multihost_jax_worker.py,
parity_tests/multihost_torch_worker.py) that write what they computed; the tests compare it
with the float64 oracle and with one device here, within the float32 row. The faults: a
process that dies in the middle of a step ends every process with a non-zero exit code,
naming it; a coordinator that nobody serves is a clear error within the timeout.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import jax_impl.train as jt
import torch_impl
import torch_impl.train as tt
from parity_tests import mesh_torch_workers as W
from parity_tests import multihost_jax_worker as J
from parity_tests.helpers import random_weights
from shared import reference
from shared.data import Dataset
from shared.layouts import LAYOUTS
from shared.tolerances import assert_close, tolerance

ROOT = Path(__file__).resolve().parent.parent
F32 = tolerance("float32")
MESHES = ["2x2", "4x1"]  # (data x model), as the workers run them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_all(commands: list[tuple[list[str], dict[str, str]]], timeout_s: float):
    """Start every command at once; wait for all (each ended, with the processes it
    started, after ``timeout_s``). Returns ``[(exit code, output), ...]`` and the seconds
    until the last one ended."""
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: torchrun's workers end with it
        )
        for cmd, env in commands
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            out += f"\n[killed after {timeout_s} s]"
        results.append((proc.returncode, out))
    return results, time.monotonic() - start


def jax_processes(folder: Path, case: str, timeout_s: float):
    """Two processes of parity_tests/multihost_jax_worker.py, joined through the
    environment that ``jax_impl.parallel.initialize()`` reads."""
    port = free_port()
    cmd = [sys.executable, "-m", "parity_tests.multihost_jax_worker", str(folder), case]
    env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    env["XLA_FLAGS"] = ""  # the worker asks for its 2 host devices itself
    commands = [(cmd, {**env, "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    return run_all(commands, timeout_s)


def launched_once(tmp_path_factory, name: str, launch) -> Path:
    """The folder of ``launch(folder)``, run once per test session: pytest-xdist may spread
    this file's tests over its workers, which share the session's temporary root, so the
    first to come launches while the others wait on a lock and read its results."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            folder.mkdir(exist_ok=True)
            results, _ = launch(folder)
            done.write_text(json.dumps(results))
    for i, (code, out) in enumerate(json.loads(done.read_text())):
        assert code == 0, f"{name}: process {i} exited with {code}:\n{out[-6000:]}"
    return folder


# ---------------------------------------------------------------------------------------------
# JAX: 2 processes x 2 host devices


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> Path:
    return launched_once(
        tmp_path_factory, "jax-multihost", lambda f: jax_processes(f, "cases", timeout_s=600)
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_jax_two_processes_forward_equals_the_float64_oracle(jax_run, mesh):
    ids, mask = J.forward_inputs()
    want = reference.forward(random_weights(J.CFG, seed=1), J.CFG, ids, mask).last_hidden_state
    got = np.load(jax_run / f"forward-{mesh}.npy")
    assert got.shape == (J.BATCH, 8, J.CFG.d_model)
    assert_close(got, want, F32, f"hidden states on {mesh}, 2 processes")


@pytest.mark.parametrize("mesh", MESHES)
def test_jax_two_processes_gradients_equal_one_device(jax_run, mesh):
    single = jax_impl.from_weights(random_weights(J.CFG, seed=1), J.CFG)
    want = dict(nnx.to_flat_state(nnx.grad(J.loss)(single, *J.forward_inputs())))
    got = np.load(jax_run / f"gradients-{mesh}.npz")
    assert set(got.files) == {"/".join(map(str, path)) for path in want} and len(want) > 0
    for path, value in want.items():
        name = "/".join(map(str, path))
        assert_close(got[name], np.asarray(value[...]), F32, f"gradient of {name} on {mesh}")


@functools.cache
def jax_one_device_training() -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """Per-step losses, gradient norms and final weights of 10 steps on one device."""
    trainer = jt.Trainer(J.task_model(), J.TRAIN)
    dataset = Dataset(J.TASK, batch_size=J.BATCH, seed=0)
    losses, norms = [], []
    for step in range(10):
        loss, norm = trainer.step([dataset.batch(step)])
        losses.append(loss)
        norms.append(norm)
    return losses, norms, jt.export_task_weights(trainer.model)


@pytest.mark.parametrize("mesh", MESHES)
def test_jax_two_processes_ten_adamw_steps_equal_one_device(jax_run, mesh):
    """Per-step losses and the final weights of jax_impl/train.py's Trainer, each process
    feeding its own rows of every global batch."""
    losses, norms, want = jax_one_device_training()
    assert max(norms) > J.TRAIN.max_grad_norm  # clipping did act
    got = np.load(jax_run / f"train-{mesh}.npz")
    assert_close(got["losses"], np.array(losses, np.float32), F32, f"losses on {mesh}")
    assert set(got.files) == {"losses", *want}
    for name in want:
        assert_close(got[name], want[name], F32, f"{name} after 10 steps on {mesh}")


def test_jax_meshes_and_batches_that_do_not_fit_the_processes_name_what_was_got(jax_run):
    errors = dict(np.load(jax_run / "errors.npz"))
    assert str(errors["part_mesh"]) == (
        "with 2 processes the mesh must use all 4 devices, got data=2 x model=1 x seq=1"
    )
    assert str(errors["rows"]).startswith(
        "this process's rows=3 are not divisible by its 2 data ranks"
    )


def test_jax_a_process_that_dies_mid_step_ends_every_process_naming_it(tmp_path):
    """Process 1 exits in the middle of a training step, while process 0 waits for it in
    the step's collectives (gloo does not notice: it waits). The coordination service misses
    process 1's heartbeats (5 s here, 100 s by default) and ends process 0, naming task 1."""
    results, seconds = jax_processes(tmp_path, "die", timeout_s=180)
    (code0, out0), (code1, out1) = results
    assert code1 == 3, out1[-3000:]
    assert "process 1 exits in the middle of step 1" in out1
    assert code0 != 0, out0[-3000:]  # SIGABRT from JAX's fatal error
    assert "killed after" not in out0, out0[-3000:]
    assert "process 0 finished step 1" not in out0
    named = "The following tasks are unhealthy (stopped sending heartbeats):\n1\n"
    assert named in out0, out0[-3000:]
    assert seconds < 180


def test_jax_a_coordinator_nobody_serves_is_a_clear_error_within_the_timeout():
    """Process 1 of 2 with no process 0: JAX itself would abort the process (a fatal error
    from C++) after its timeout; initialize() raises a RuntimeError naming the address."""
    port = free_port()
    code = (
        "from jax_impl import parallel\n"
        f"parallel.initialize('localhost:{port}', 2, 1, local_device_count=2, timeout_s=3)\n"
    )
    results, seconds = run_all([([sys.executable, "-c", code], {"XLA_FLAGS": ""})], 120)
    ((rc, out),) = results
    assert rc == 1, out[-3000:]
    assert (
        f"RuntimeError: process 1 of 2 could not reach the JAX coordinator at localhost:{port} "
        "within timeout_s=3"
    ) in out, out[-3000:]
    assert seconds < 60


def test_jax_initialize_rejects_bad_counts_before_joining(monkeypatch):
    from jax_impl import parallel

    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        parallel.initialize("localhost:1", 2, 2)
    with pytest.raises(ValueError, match="num_processes must be >= 1, got 0"):
        parallel.initialize("localhost:1", 0, 0)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
        parallel.initialize("localhost:1", None, 0)
    assert jax.process_count() == 1  # nothing joined


# ---------------------------------------------------------------------------------------------
# PyTorch: torchrun, 2 nodes x 2 processes


def torchrun_nodes(folder: Path, case: str, timeout_s: float):
    """Two torchrun launchers, each a "node" of 2 processes, meeting at a c10d rendezvous
    (the exact command of a two-node cluster, both nodes on localhost)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
        "parity_tests/multihost_torch_worker.py", str(folder), case,
    ]  # fmt: skip
    return run_all([(cmd, {}), (cmd, {})], timeout_s)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory) -> Path:
    return launched_once(
        tmp_path_factory, "torch-multihost", lambda f: torchrun_nodes(f, "cases", timeout_s=600)
    )


def _rows(folder: Path, key: str) -> np.ndarray:
    """The global batch of ``key`` from the ranks' forward files: rows by data rank (the
    "model" ranks of a data rank hold the same rows)."""
    parts = {}
    for f in sorted(folder.glob("forward-*.npz")):
        rank = np.load(f)
        parts.setdefault(int(rank["data_rank"]), rank[key])
    return np.concatenate([parts[r] for r in sorted(parts)])


@pytest.mark.parametrize("mesh", MESHES)
def test_torch_two_nodes_forward_equals_the_float64_oracle(torch_run, mesh):
    ids, mask = W.forward_inputs()
    want = reference.forward(random_weights(W.CFG, seed=1), W.CFG, ids, mask).last_hidden_state
    got = _rows(torch_run / mesh, "h")
    assert got.shape == (W.BATCH, 8, W.CFG.d_model)
    assert_close(got, want, F32, f"hidden states on {mesh}, 2 nodes")


@pytest.mark.parametrize("mesh", MESHES)
def test_torch_two_nodes_gradients_equal_one_device(torch_run, mesh):
    ids, mask = W.forward_inputs()
    single = torch_impl.from_weights(random_weights(W.CFG, seed=1), W.CFG).train()
    single(ids, mask).square().mean().backward()
    got = np.load(torch_run / mesh / "gradients.npz")
    table = torch_impl.parameter_table(single)
    assert set(got.files) == {name for name, _, _ in table}
    for name, param, layout in table:
        (want,) = LAYOUTS[layout].split(param.grad.numpy(), 1)
        assert_close(got[name], want, F32, f"gradient of {name} on {mesh}")


@functools.cache
def torch_one_device_training() -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """Per-step losses, gradient norms and final weights of 10 steps on one device."""
    trainer = tt.Trainer(W.task_model(), W.TRAIN)
    dataset = Dataset(W.TASK, batch_size=W.BATCH, seed=0)
    losses, norms = [], []
    for step in range(10):
        loss, norm = trainer.step([dataset.batch(step)])
        losses.append(loss)
        norms.append(norm)
    return losses, norms, tt.export_task_weights(trainer.model)


@pytest.mark.parametrize("mesh", MESHES)
def test_torch_two_nodes_ten_adamw_steps_equal_one_device(torch_run, mesh):
    losses, norms, want = torch_one_device_training()
    assert max(norms) > W.TRAIN.max_grad_norm  # clipping did act
    got = np.load(torch_run / mesh / "train.npz")
    assert_close(got["losses"], np.array(losses), F32, f"losses on {mesh}")
    assert set(got.files) == {"losses", *want}
    for name in want:
        assert_close(got[name], want[name], F32, f"{name} after 10 steps on {mesh}")


def test_torch_a_rank_that_dies_mid_step_ends_both_nodes_naming_it(tmp_path):
    """Global rank 3 exits in the middle of a step; its node's agent ends its other process
    and names rank 3 as the root cause; on the other node the ranks waiting in the
    all-reduce fail (gloo sees the peer gone) and that agent exits non-zero too (reporting
    its own failed ranks, or, when the dead node held the rendezvous store, the store's
    lost connection)."""
    results, seconds = torchrun_nodes(tmp_path, "die", timeout_s=180)
    outputs = "\n".join(out for _, out in results)
    for code, out in results:
        assert code not in (0, None), out[-3000:]
        assert "killed after" not in out, out[-3000:]
    assert "rank 3 exits in the middle of step 1" in outputs
    root = re.search(r"Root Cause.*?rank\s*: 3 \(local_rank: 1\)\s*exitcode\s*: 3", outputs, re.S)
    assert root, outputs[-4000:]
    assert not any(f"rank {r} finished step 1" in outputs for r in range(4))
    assert seconds < 180


def test_torch_a_coordinator_nobody_serves_is_a_clear_error_within_the_timeout():
    port = free_port()
    env = {"MASTER_ADDR": "localhost", "MASTER_PORT": str(port), "RANK": "1", "WORLD_SIZE": "2"}
    code = "from torch_impl import parallel\nparallel.initialize(timeout_s=3)\n"
    results, seconds = run_all([([sys.executable, "-c", code], env)], 120)
    ((rc, out),) = results
    assert rc == 1, out[-3000:]
    assert (
        f"RuntimeError: process 1 of 2 could not reach the coordinator at localhost:{port} "
        "within timeout_s=3"
    ) in out, out[-3000:]
    assert seconds < 60


def test_torch_initialize_rejects_bad_counts_before_joining(monkeypatch):
    from torch_impl import parallel

    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        parallel.initialize("localhost:1", 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="num_processes must be >= 1, got 0"):
        parallel.initialize()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        parallel.initialize()
    assert not torch.distributed.is_initialized()
