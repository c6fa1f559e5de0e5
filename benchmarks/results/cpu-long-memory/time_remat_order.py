"""CPU time of the benchmark train step (flash, memory-optimised order): no remat, block with
``jax.checkpoint`` (commit 679c8bf's ``_checkpointed``), block with the ``custom_vjp`` one,
timed in turn. The old module is ``git show 679c8bf:jax_impl/encoder.py`` saved at
OLD_ENCODER (default /tmp/ro/old_encoder.py). Run from the repository root:
``python benchmarks/results/cpu-long-memory/time_remat_order.py T REPEATS``."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_impl.encoder as E
from benchmarks.harness import time_interleaved
from benchmarks.suites import load_config
from studies import cpu_scheduler as cs

spec = importlib.util.spec_from_file_location(
    "old_encoder", os.environ.get("OLD_ENCODER", "/tmp/ro/old_encoder.py")
)
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)

jax.config.update("jax_default_matmul_precision", "highest")
T = int(sys.argv[1])
repeats = int(sys.argv[2])
_, cfg = load_config("bert-base")
cfg = cfg.replace(max_len=max(cfg.max_len, T))
print(f"T={T}, {os.cpu_count()} CPUs, load average {os.getloadavg()} at the start", flush=True)
new = E._checkpointed
calls, state = {}, {}
for name, remat, impl in (
    ("none", "none", new),
    ("block-checkpoint", "block", old._checkpointed),
    ("block-custom_vjp", "block", new),
):
    E._checkpointed = impl
    fn, args, donate = cs.train_step(cfg, "flash", remat, 1, T)
    c = cs.compile_step(fn, args, donate, "memory")
    print(name, "plan", c.memory_analysis().temp_size_in_bytes / 2**20, "MiB", flush=True)
    state[name] = jax.tree.map(jnp.copy, args)
    calls[name] = cs._stepper(c, state, name)
E._checkpointed = new
t = time_interleaved(calls, repeats)
for name in calls:
    print(
        f"{name:18s} median wall {np.median(t[name].wall):7.2f} s, min {min(t[name].wall):7.2f} s, median CPU {np.median(t[name].cpu):7.2f} s, CPU per round {[round(x, 2) for x in t[name].cpu]}",
        flush=True,
    )
print("load average at the end", os.getloadavg())
