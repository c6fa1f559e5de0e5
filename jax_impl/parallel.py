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
"""

from __future__ import annotations

import os

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
    "load",
    "make_mesh",
    "parallelize",
    "place_batch",
    "save",
]


def make_mesh(*, data: int = 1, model: int = 1, seq: int = 1) -> Mesh:
    """A (data, model, seq) mesh over the first ``data * model * seq`` devices, axes named as
    the plan's.

    ``jax_impl.context`` runs attention under ``jax.shard_map`` over its "seq" axis (context
    parallelism); ``parallelize`` leaves the encoder's parameters whole along "seq".
    """
    devices = jax.devices()
    plan.check_mesh(plan.AXES, (data, model, seq), [str(d) for d in devices])
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
            param.set_value(jax.device_put(param.get_value(), replicated))
    for name, param, _ in parameter_table(encoder):
        axes = plan.spec(name, param.shape, fsdp=fsdp, data=data, model=tp)
        sharding = NamedSharding(mesh, PartitionSpec(*axes))
        param.set_value(jax.device_put(param.get_value(), sharding))
    context_parallel(model, mesh, method=context, load_balance=load_balance)
    return model


def _check(encoder: TransformerEncoder, mesh: Mesh) -> None:
    if tuple(mesh.axis_names) != plan.AXES:
        raise ValueError(f"mesh axes must be {plan.AXES}, got {tuple(mesh.axis_names)}")
    plan.check_model_split(encoder.config, mesh.shape["model"])


def place_batch(batch, mesh: Mesh):
    """Put a global batch (an array or a dict of arrays, batch first) on ``mesh``, split along
    "data" and replicated along "model"."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def place(x) -> jax.Array:
        plan.check_batch(np.shape(x)[0], mesh.shape["data"])
        return jax.device_put(x, sharding)

    return jax.tree.map(place, batch)


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
