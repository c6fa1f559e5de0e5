"""Many devices in JAX: a ("data", "model", "seq") mesh and the shared plan as ``NamedSharding``.

Mirrors ``torch_impl/parallel.py``. Three steps, as in PyTorch::

    mesh = parallel.make_mesh(data=2, model=2)
    parallel.parallelize(model, mesh, fsdp=False)   # in place; returns the model
    h = model(parallel.place_batch(input_ids, mesh))  # the global batch, split over "data"

On a mesh whose "seq" is > 1, ``parallelize(model, mesh, context="ring" | "all_gather",
load_balance=...)`` also makes every layer's attention context-parallel
(:func:`context_parallel`): the batch stays global, and only attention runs per device.

``export_weights`` and ``save`` are ``jax_impl``'s own (they work on sharded models too),
re-exported here.

``parallelize`` gives every ``nnx.Param`` the ``NamedSharding`` that ``shared/parallel.py``
names for it (parameters outside the encoder, such as a task head, are replicated); ``jit``
and the compiler's sharding propagation do the rest (the mesh's axes are ``AxisType.Auto``).
The optimizer state created from sharded parameters (``optax`` ``init``) takes their
sharding. Gradients of the mean over the global batch are the averages over "data".

JAX takes the global batch: :func:`place_batch` puts it on the mesh, split along "data".
Dropout draws the same masks as on one device (the partitionable threefry generator, JAX's
default, makes random bits independent of the sharding).

The device count is fixed when JAX starts: on a CPU, several host devices need
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX is imported.

Several processes (one per host: a TPU slice, a GPU cluster, or a few processes on one CPU):
every process calls :func:`initialize` first, then runs the same three steps.
:func:`make_mesh` spans every process's devices, and :func:`place_batch` takes this
process's rows of the global batch (:func:`slice_batch` cuts them from a global batch).
"""

from __future__ import annotations

import math
import os
import socket
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jax_impl import context
from jax_impl.encoder import TransformerEncoder
from jax_impl.weights import export_weights, from_weights, parameter_table, save
from shared import parallel as plan
from shared import weights as v1

__all__ = [
    "context_parallel",
    "export_weights",
    "initialize",
    "load",
    "make_mesh",
    "parallelize",
    "place_batch",
    "save",
    "slice_batch",
]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_count: int | None = None,
    timeout_s: float = 300.0,
    heartbeat_timeout_s: float = 100.0,
) -> None:
    """Join this process to a run of ``num_processes`` JAX processes (``jax.distributed``).

    Call it in every process before anything else touches JAX's devices. Each argument left
    out is read from the environment (``JAX_COORDINATOR_ADDRESS`` as ``host:port``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); when none is there either, JAX detects the
    cluster itself (a Cloud TPU slice, SLURM, Open MPI, Kubernetes). Process 0 also runs
    the coordination service, on the address's port.

    ``local_device_count``: host devices of this process on a CPU (``jax_num_cpu_devices``;
    GPUs and TPUs count their own). Cross-process collectives on a CPU go through gloo.

    ``timeout_s``: how long a process waits for every process to join. ``heartbeat_timeout_s``:
    how long the coordination service waits for a silent process before it declares it dead
    and ends every process, naming the silent one ("tasks are unhealthy ...: 1").

    Raises ``ValueError`` for a process count or id out of range (argument or environment),
    and ``RuntimeError`` naming the address and the timeout when the coordinator cannot be
    reached within ``timeout_s``.
    """
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count}), got {index}")
    if local_device_count is not None:
        if local_device_count < 1:
            raise ValueError(f"local_device_count must be >= 1, got {local_device_count}")
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is not None and index not in (None, 0):
        _wait_for_coordinator(address, timeout_s, f"process {index} of {count}")
    jax.distributed.initialize(
        address,
        count,
        index,
        initialization_timeout=math.ceil(timeout_s),
        heartbeat_timeout_seconds=math.ceil(heartbeat_timeout_s),
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _wait_for_coordinator(address: str, timeout_s: float, who: str) -> None:
    """Connect to ``host:port`` until it accepts or ``timeout_s`` has passed.

    JAX's client aborts the whole process (a C++ fatal error, no Python exception) when it
    cannot reach the coordinator in time; probing first turns that into a ``RuntimeError``.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port', got {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{who} could not reach the JAX coordinator at {address} within "
                    f"timeout_s={timeout_s}: {error}"
                ) from None
            time.sleep(0.2)


def make_mesh(*, data: int = 1, model: int = 1, seq: int = 1) -> Mesh:
    """A (data, model, seq) mesh over the first ``data * model * seq`` devices, axes named as
    the plan's.

    ``jax_impl.context`` runs attention under ``jax.shard_map`` over its "seq" axis (context
    parallelism); ``parallelize`` leaves the encoder's parameters whole along "seq".
    """
    devices = jax.devices()
    plan.check_mesh(plan.AXES, (data, model, seq), [str(d) for d in devices])
    if jax.process_count() > 1 and data * model * seq != len(devices):
        raise ValueError(  # a process with no device in the mesh could not take part
            f"with {jax.process_count()} processes the mesh must use all {len(devices)} "
            f"devices, got data={data} x model={model} x seq={seq}"
        )
    return jax.make_mesh(
        (data, model, seq),
        plan.AXES,
        axis_types=(AxisType.Auto,) * 3,  # jax.make_mesh defaults to Explicit axes
        devices=devices[: data * model * seq],
    )


def parallelize(
    model: nnx.Module,
    mesh: Mesh,
    *,
    fsdp: bool = False,
    context: str = "ring",
    load_balance: bool = False,
) -> nnx.Module:
    """Shard ``model``'s parameters over ``mesh`` by the shared plan, in place; returns it.

    ``model`` is a :class:`~jax_impl.encoder.TransformerEncoder` or a module holding one as
    ``.encoder`` (the task models of ``jax_impl/train.py``). On a mesh whose "seq" axis is
    > 1, every layer's attention runs over the sequence split across it (context
    parallelism, :func:`context_parallel`): ``context`` "ring" or "all_gather",
    ``load_balance`` the zig-zag order (for causal attention; T must divide into 2 seq
    chunks). ValueError naming the choices for another ``context``.
    """
    encoder = model if isinstance(model, TransformerEncoder) else model.encoder
    _check(encoder, mesh)
    data, tp = mesh.shape["data"], mesh.shape["model"]
    replicated = NamedSharding(mesh, PartitionSpec())
    for _, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            param.set_value(_put(param.get_value(), replicated))
    for name, param, _ in parameter_table(encoder):
        axes = plan.spec(name, param.shape, fsdp=fsdp, data=data, model=tp)
        sharding = NamedSharding(mesh, PartitionSpec(*axes))
        param.set_value(_put(param.get_value(), sharding))
    context_parallel(model, mesh, method=context, load_balance=load_balance)
    return model


def _put(value: jax.Array, sharding: NamedSharding) -> jax.Array:
    """``value`` (the same in every process) laid out by ``sharding``. With several
    processes each builds its own devices' parts from its copy: ``jax.device_put`` would
    first compare the copies across processes, one collective per parameter."""
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _check(encoder: TransformerEncoder, mesh: Mesh) -> None:
    if tuple(mesh.axis_names) != plan.AXES:
        raise ValueError(f"mesh axes must be {plan.AXES}, got {tuple(mesh.axis_names)}")
    plan.check_model_split(encoder.config, mesh.shape["model"])


def place_batch(batch, mesh: Mesh):
    """Put a global batch (an array or a dict of arrays, batch first) on ``mesh``, split along
    "data" and replicated along "model".

    With several processes, each passes only its own rows (:func:`slice_batch`), and the
    global batch is assembled from them (``jax.make_array_from_process_local_data``); the
    result is a global array, of which each process holds its devices' parts."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    shards = _data_shards_here(mesh)

    def place(x) -> jax.Array:
        if jax.process_count() == 1:
            plan.check_batch(np.shape(x)[0], mesh.shape["data"])
            return jax.device_put(x, sharding)
        rows = np.shape(x)[0]
        if rows % len(shards) != 0:
            raise ValueError(
                f"this process's rows={rows} are not divisible by its {len(shards)} data "
                "ranks: every data rank needs the same number of sequences"
            )
        whole = rows // len(shards) * mesh.shape["data"]
        return jax.make_array_from_process_local_data(sharding, x, (whole, *np.shape(x)[1:]))

    return jax.tree.map(place, batch)


def slice_batch(batch, mesh: Mesh):
    """This process's rows of a global batch (an array or a dict of arrays, batch first):
    those of the data ranks whose devices it holds, which :func:`place_batch` takes. With
    one process, the whole batch."""
    shards = _data_shards_here(mesh)

    def cut(x):
        plan.check_batch(np.shape(x)[0], mesh.shape["data"])
        rows = np.shape(x)[0] // mesh.shape["data"]
        return x[shards[0] * rows : (shards[-1] + 1) * rows]  # (B * shards / data, ...)

    return jax.tree.map(cut, batch)


def _data_shards_here(mesh: Mesh) -> list[int]:
    """The "data" indices of this process's devices in ``mesh``: consecutive, as
    ``jax.make_array_from_process_local_data`` needs."""
    here = jax.process_index()
    shards = sorted({i[0] for i, d in np.ndenumerate(mesh.devices) if d.process_index == here})
    if not shards or shards != list(range(shards[0], shards[-1] + 1)):
        raise ValueError(
            f"process {here} must hold the devices of consecutive data ranks of the mesh, "
            f"got data ranks {shards}"
        )
    return shards


def load(
    path: str | os.PathLike, mesh: Mesh, *, fsdp: bool = False, backend: str = "math"
) -> TransformerEncoder:
    """A format-v1 checkpoint (from either framework) loaded straight onto ``mesh``."""
    weights, cfg = v1.load_file(path)
    return parallelize(from_weights(weights, cfg, backend=backend), mesh, fsdp=fsdp)


def context_parallel(
    model: nnx.Module, mesh: Mesh, *, method: str = "ring", load_balance: bool = False
) -> None:
    """Give every attention of ``model`` (an encoder or a module holding one as ``.encoder``)
    a ``context.ContextParallel`` over ``mesh``'s "seq"
    axis (none when it is 1). Inputs stay global arrays: positions (learned, sinusoidal,
    RoPE), padding and causality are the one-device ones, and inside each attention
    ``context.shard_attention`` splits the sequence over "seq" (in load-balanced order if
    ``load_balance``) and gives each device its queries against every key."""
    encoder = model if isinstance(model, TransformerEncoder) else model.encoder
    plan_ = context.ContextParallel(mesh, method=method, load_balance=load_balance)
    for layer in encoder.encoder.layers:
        layer.attention.context_parallel = plan_ if mesh.shape["seq"] > 1 else None
