"""One process of a multi-process JAX run, for test_multihost.py (run as a script).

``python -m parity_tests.multihost_jax_worker FOLDER CASE``, in every process, with
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set: each process
has 2 host devices, joins through ``jax_impl.parallel.initialize()`` (no arguments: it reads
the environment), and runs ``CASE``:

* ``cases``: on meshes (data=2, model=2) and (data=4), the hidden states, the gradients of
  mean(h**2) and 10 AdamW steps of ``jax_impl/train.py``'s Trainer; process 0 writes them,
  gathered from every process, to ``FOLDER`` for the test to compare with one device.
* ``die``: steps of a sharded reduction over (data=4); process 1 exits in the middle of
  step 1, process 0 waits in the step's collective until the coordination service finds
  process 1 dead.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

import jax_impl
import jax_impl.train as jt
from jax_impl import parallel
from parity_tests.helpers import make_inputs, random_weights, tiny_config
from shared.data import Dataset, TaskConfig
from shared.training import TrainConfig

CFG = tiny_config()
MESHES = [(2, 2), (4, 1)]  # (data, model)
TRAIN = TrainConfig(learning_rate=3e-3, warmup_steps=2, total_steps=20, max_grad_norm=0.5)
TASK = TaskConfig(task="seen_before", vocab_size=CFG.vocab_size, seq_len=8)
BATCH = 4


def forward_inputs() -> tuple[np.ndarray, np.ndarray]:
    """The global batch of the forward and gradient cases, int32 as JAX takes it."""
    ids, mask, _ = make_inputs(CFG, BATCH, 8, seed=2, pad="some")
    return ids.astype(np.int32), mask.astype(np.int32)


def task_model() -> jt.SequenceClassifier:
    """The task model every run starts from (the same seed, so the same weights)."""
    return jt.build_model(CFG, TASK, rngs=nnx.Rngs(0))


def loss(model, ids, mask):
    return loss_and_hidden_states(model, ids, mask)[0]


def loss_and_hidden_states(model, ids, mask):
    """mean(h**2) and h: the forward and the gradients from one compiled program."""
    h = model(ids, mask)
    return jnp.mean(jnp.square(h)), h


def gathered(tree, mesh):
    """Every leaf as one NumPy array, its parts collected from every process (one jitted
    copy to every device; ``multihost_utils.process_allgather`` compiles one per leaf)."""
    whole = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), whole)


def on_mesh(trainer: jt.Trainer, mesh) -> jt.Trainer:
    """The trainer's state that is not a parameter (dropout keys and counts, the sinusoid
    table, the optimizer's step counts: made on one device) replicated on ``mesh``. The first
    step returns them on the mesh; left on one device, the second step compiles again."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(x):  # the same in every process: each builds its own devices' copies
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, replicated, lambda index: host[index])

    def commit(x):
        if isinstance(x.sharding, NamedSharding):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        return put(x)

    trainer.rest, trainer.opt_state = jax.tree.map(commit, (trainer.rest, trainer.opt_state))
    return trainer


def run_cases(folder: Path) -> None:
    here = jax.process_index()
    start = time.monotonic()
    for data, model in MESHES:
        name = f"{data}x{model}"
        print(f"{name} {time.monotonic() - start:.1f} s", flush=True)
        mesh = parallel.make_mesh(data=data, model=model)
        sharded = parallel.parallelize(
            jax_impl.from_weights(random_weights(CFG, seed=1), CFG), mesh
        )
        ids, mask = parallel.place_batch(parallel.slice_batch(forward_inputs(), mesh), mesh)
        forward_and_grad = jax.jit(nnx.value_and_grad(loss_and_hidden_states, has_aux=True))
        (_, h), grad_state = forward_and_grad(sharded, ids, mask)
        h = gathered(h, mesh)
        flat = nnx.to_flat_state(grad_state)
        grads = gathered({"/".join(map(str, path)): v[...] for path, v in flat}, mesh)

        trainer = on_mesh(jt.Trainer(parallel.parallelize(task_model(), mesh), TRAIN), mesh)
        dataset = Dataset(TASK, batch_size=BATCH, seed=0)
        losses = []
        for step in range(10):
            local = parallel.slice_batch(dataset.batch(step), mesh)  # this process's rows
            loss_value, _ = trainer.step([parallel.place_batch(local, mesh)])
            losses.append(loss_value)
        final = task_model()
        nnx.update(final, gathered(nnx.state(trainer.model, nnx.Param), mesh))
        weights = jt.export_task_weights(final)
        print(f"{name} trained {time.monotonic() - start:.1f} s", flush=True)
        if here == 0:
            np.save(folder / f"forward-{name}.npy", h)
            np.savez(folder / f"gradients-{name}.npz", **grads)
            np.savez(folder / f"train-{name}.npz", losses=np.array(losses), **weights)
    errors = {}
    for name, case in {
        "part_mesh": lambda: parallel.make_mesh(data=2),  # 2 of the 4 devices
        "rows": lambda: parallel.place_batch(np.zeros((3, 8)), parallel.make_mesh(data=4)),
    }.items():
        try:
            case()
        except ValueError as error:
            errors[name] = str(error)
    if here == 0:
        np.savez(folder / "errors.npz", **errors)
    multihost_utils.sync_global_devices("written")


def run_die() -> None:
    """Steps of one sharded reduction each (a training step's collective, without the model:
    starting processes is the slow part); process 1 exits in the middle of step 1."""
    mesh = parallel.make_mesh(data=4)
    total = jax.jit(lambda x: jnp.sum(x * x))
    for step in range(3):
        rows = np.full((BATCH, 8), step, np.float32)
        batch = parallel.place_batch(parallel.slice_batch(rows, mesh), mesh)
        if step == 1 and jax.process_index() == 1:
            print("process 1 exits in the middle of step 1", flush=True)
            os._exit(3)
        float(total(batch))
        print(f"process {jax.process_index()} finished step {step}", flush=True)


if __name__ == "__main__":
    # before anything touches JAX's devices (importing JAX does not)
    folder, case = Path(sys.argv[1]), sys.argv[2]
    # a short heartbeat timeout finds the dead process soon; on a loaded machine a longer
    # one keeps a busy but live process from being declared dead
    heartbeat = 5 if case == "die" else 30
    parallel.initialize(local_device_count=2, timeout_s=60, heartbeat_timeout_s=heartbeat)
    run_cases(folder) if case == "cases" else run_die()
