"""Many devices in PyTorch: a ("data", "model", "seq") DeviceMesh and the shared plan through
``torch.distributed`` (DTensor tensor parallelism, FSDP2, DDP).

Mirrors ``jax_impl/parallel.py``. Three steps, as in JAX, in every process of the group::

    mesh = parallel.make_mesh(data=2, model=2)
    parallel.parallelize(model, mesh, fsdp=False)   # in place; returns the model
    h = model(parallel.slice_batch(input_ids, mesh))  # this data rank's rows of the batch

On a mesh whose "seq" is > 1, ``parallelize(model, mesh, context="ring" | "all_gather",
load_balance=...)`` also makes every layer's attention context-parallel
(:func:`context_parallel`): each rank then takes its rows of the sequence too
(:func:`slice_sequence`), and gradients are summed over "seq" by parameter hooks.

``export_weights`` and ``save`` are ``torch_impl``'s own (they work on sharded models too),
re-exported here.

``parallelize`` turns ``shared/parallel.py`` into a ``parallelize_module`` plan per encoder
layer (``ColwiseParallel`` for column-split linears, ``RowwiseParallel`` for row-split ones,
on the mesh's "model" axis), then, along "data", ``fully_shard`` (FSDP2) per layer and at
the root when ``fsdp`` (each parameter on the dim the plan gives "data":
:func:`fsdp_placements`), otherwise ``replicate`` (DDP). Embeddings, norms and a task head stay
whole on every "model" rank.

PyTorch feeds each data rank its own rows (its idiom): :func:`slice_batch` cuts them from a
global batch. DDP and FSDP average the ranks' gradients, so each rank's loss must be its
share of the global mean: with equal numbers of targets per rank (a per-sequence task, or
equal real-token counts) the per-rank mean is that share; otherwise divide each rank's
summed loss by ``global count / data``, not by its own count.

Dropout: DTensor's random ops on a CPU mesh do not reproduce one device's masks (and on
GPUs only DTensor ops go through its offset-based generator; our dropout sees local
tensors), so sharded dropout is not the one-device dropout; only its rate is.

Processes: :func:`launch` starts one per rank (gloo on CPU, NCCL on GPUs) with a file://
rendezvous; ``torchrun`` works too (it sets the environment ``init_process_group`` reads).

Several hosts (``torchrun --nnodes=N``, SLURM): every process calls :func:`initialize` first,
then runs the same three steps; :func:`make_mesh` spans every process of every node.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from shared import parallel as plan
from shared import weights as v1
from torch_impl import context
from torch_impl.encoder import TransformerEncoder
from torch_impl.weights import export_weights, from_weights, parameter_table, save

__all__ = [
    "context_parallel",
    "export_weights",
    "initialize",
    "launch",
    "load",
    "make_mesh",
    "parallelize",
    "save",
    "slice_batch",
    "slice_sequence",
]

STYLES = {plan.COLUMNS: ColwiseParallel, plan.ROWS: RowwiseParallel}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: float = 300.0,
    backend: str | None = None,
) -> None:
    """Join this process to a group of ``num_processes`` (``dist.init_process_group``).

    Call it in every process, before :func:`make_mesh`. Each argument left out is read from
    the environment that ``torchrun`` (and ``launch``) set: ``MASTER_ADDR`` and
    ``MASTER_PORT`` (the address, ``host:port``), ``WORLD_SIZE``, ``RANK``. With no address
    given, the group joins through that environment (``env://``: under torchrun, the store of
    its agent); with one, through ``tcp://host:port``, served by process 0.

    ``backend``: "nccl" when CUDA is present (each process then takes GPU ``LOCAL_RANK``),
    else "gloo". ``timeout_s``: how long a process waits for the others, to join and in each
    collective.

    Raises ``ValueError`` for a process count or id out of range (argument or environment),
    and ``RuntimeError`` naming the address and the timeout when the coordinator cannot be
    reached within ``timeout_s``.
    """
    address = coordinator_address or _env_address()
    count = num_processes if num_processes is not None else _env_int("WORLD_SIZE")
    index = process_id if process_id is not None else _env_int("RANK")
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count}), got {index}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if address is not None and index not in (None, 0):
        _wait_for_coordinator(address, timeout_s, f"process {index} of {count}")
    dist.init_process_group(
        backend,
        init_method=f"tcp://{coordinator_address}" if coordinator_address else "env://",
        rank=-1 if index is None else index,
        world_size=-1 if count is None else count,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK") or 0)


def _env_address() -> str | None:
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return f"{host}:{port}" if host and port else None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _wait_for_coordinator(address: str, timeout_s: float, who: str) -> None:
    """Connect to ``host:port`` until it accepts or ``timeout_s`` has passed, so that an
    address nobody serves is one ``RuntimeError`` naming it."""
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
                    f"{who} could not reach the coordinator at {address} within "
                    f"timeout_s={timeout_s}: {error}"
                ) from None
            time.sleep(0.2)


def make_mesh(*, data: int = 1, model: int = 1, seq: int = 1) -> DeviceMesh:
    """A (data, model, seq) mesh over every process of the group, axes named as the plan's.

    ``mesh["seq"].get_group()`` is the process group that ``torch_impl.context`` passes key
    and value blocks around (context parallelism); ``parallelize`` leaves the encoder's
    parameters whole along "seq".
    """
    _check_group("make_mesh")
    world = dist.get_world_size()
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    present = [f"{device_type} rank {r}" for r in range(world)]
    plan.check_mesh(plan.AXES, (data, model, seq), present)
    if data * model * seq != world:
        raise ValueError(
            f"mesh data={data} x model={model} x seq={seq} must use all {world} processes, "
            f"got {data * model * seq}: {', '.join(present)}"
        )
    return init_device_mesh(device_type, (data, model, seq), mesh_dim_names=plan.AXES)


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    fsdp: bool = False,
    context: str = "ring",
    load_balance: bool = False,
) -> nn.Module:
    """Shard ``model`` over ``mesh`` by the shared plan, in place; returns it.

    ``model`` is a :class:`~torch_impl.encoder.TransformerEncoder` or a module holding one as
    ``.encoder`` (the task models of ``torch_impl/train.py``). On a mesh whose "seq" axis is
    > 1, every layer's attention runs over the sequence split across it (context
    parallelism, :func:`context_parallel`): ``context`` "ring" or "all_gather",
    ``load_balance`` the zig-zag order (for causal attention; T must divide into 2 seq
    chunks). ValueError naming the choices for another ``context``.
    """
    _check_group("parallelize")
    encoder = model if isinstance(model, TransformerEncoder) else model.encoder
    _check(encoder, mesh)
    _check_context(encoder, mesh, fsdp)
    if mesh["model"].size() > 1:
        for i, layer in enumerate(encoder.encoder.layers):
            parallelize_module(layer, mesh["model"], layer_plan(encoder, i))
    if fsdp:
        placement = fsdp_placements(encoder, mesh)
        for layer in encoder.encoder.layers:
            fully_shard(layer, mesh=mesh["data"], shard_placement_fn=placement)
        fully_shard(model, mesh=mesh["data"], shard_placement_fn=placement)
    elif mesh["data"].size() > 1:
        for layer in encoder.encoder.layers:
            replicate(layer, mesh=mesh["data"])  # FSDP2's DDP twin
        replicate(model, mesh=mesh["data"])
    context_parallel(model, mesh, method=context, load_balance=load_balance, fsdp=fsdp)
    return model


def layer_plan(encoder: TransformerEncoder, i: int) -> dict[str, ColwiseParallel | RowwiseParallel]:
    """The ``parallelize_module`` plan of layer ``i``, read from the shared table.

    Module paths come from the parameters' format-v1 names: ``layers.0.ffn.in.weight`` is the
    weight of ``encoder.encoder.layers[0].ffn.in_proj``.
    """
    layer = encoder.encoder.layers[i]
    path_of = {id(p): name for name, p in layer.named_parameters()}
    styles = {}
    for name, param, _ in parameter_table(encoder):
        how = plan.tensor_parallel_style(name)
        if name.startswith(f"layers.{i}.") and name.endswith(".weight") and how in STYLES:
            module_path = path_of[id(param)].removesuffix(".weight")
            styles[module_path] = STYLES[how]()
    return styles


def fsdp_placements(
    encoder: TransformerEncoder, mesh: DeviceMesh
) -> Callable[[nn.Parameter], Shard | None]:
    """``fully_shard``'s ``shard_placement_fn``: each encoder parameter is sharded along
    "data" on the dim that the shared plan gives "data" (``plan.spec(..., fsdp=True)``),
    translated through the parameter's layout (a ``transpose``d linear weight swaps dims).

    A parameter with no "data" axis in the plan (one that "data" does not divide), and any
    parameter outside the encoder (a task head), gets FSDP2's default, dim 0 (padded).
    """
    data, model = mesh["data"].size(), mesh["model"].size()
    dims = {}
    for name, param, layout in parameter_table(encoder):
        axes = plan.spec(name, param.shape, fsdp=True, data=data, model=model)
        on_data = [i for i, a in enumerate(axes) if a == "data" or "data" in (a or ())]
        if on_data:
            (axis,) = on_data
            dims[id(param)] = param.ndim - 1 - axis if layout == "transpose" else axis
    return lambda param: Shard(dims[id(param)]) if id(param) in dims else None


def _check(encoder: TransformerEncoder, mesh: DeviceMesh) -> None:
    if tuple(mesh.mesh_dim_names or ()) != plan.AXES:
        raise ValueError(f"mesh axes must be {plan.AXES}, got {mesh.mesh_dim_names}")
    plan.check_model_split(encoder.config, mesh["model"].size())


def _check_group(what: str) -> None:
    if not dist.is_initialized():
        raise ValueError(
            f"{what} needs a torch.distributed process group, got none: start the processes "
            "with torch_impl.parallel.launch or torchrun (then dist.init_process_group)"
        )


def slice_batch(batch, mesh: DeviceMesh):
    """This data rank's rows of a global batch (an array or a dict of arrays, batch first);
    every "model" rank of a data rank gets the same rows. NumPy stays NumPy (the model and
    ``Trainer.step`` move it to the device), tensors stay tensors."""
    data, rank = mesh["data"].size(), mesh["data"].get_local_rank()

    def cut(x):
        plan.check_batch(x.shape[0], data)
        rows = x.shape[0] // data
        return x[rank * rows : (rank + 1) * rows]  # (B / data, ...)

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    return cut(batch)


def load(
    path: str | os.PathLike, mesh: DeviceMesh, *, fsdp: bool = False, backend: str = "math"
) -> TransformerEncoder:
    """A format-v1 checkpoint (from either framework) loaded straight onto ``mesh``."""
    weights, cfg = v1.load_file(path)
    return parallelize(from_weights(weights, cfg, backend=backend), mesh, fsdp=fsdp)


def launch(
    fn: Callable[..., None], nprocs: int, *args, timeout_s: float = 300.0, backend: str = "gloo"
) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` processes joined in one process group.

    ``fn`` must be importable (a module-level function). If a rank raises, the others are
    ended and a ``RuntimeError`` names the rank that failed first and its error (the others
    then fail too, in the collectives that wait for it); if the ranks have not all finished
    after ``timeout_s`` seconds, they are ended and a ``TimeoutError`` is raised.
    """
    with tempfile.TemporaryDirectory() as folder:
        init = os.path.join(folder, "rendezvous")
        context = mp.start_processes(
            _run_rank,
            args=(fn, nprocs, init, backend, timeout_s, args),
            nprocs=nprocs,
            join=False,
            start_method="spawn",
        )
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
        try:
            while not context.join(timeout=1.0):
                if datetime.datetime.now() > deadline:
                    raise TimeoutError(f"{nprocs} ranks still running after {timeout_s} s")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            raise RuntimeError(_first_failure(folder, error)) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(timeout=10)


def _first_failure(folder: str, error: Exception) -> str:
    """The rank whose error came first, and its error, from the ranks' error files."""
    reports = sorted(Path(folder).glob("error-*"), key=lambda f: f.stat().st_mtime_ns)
    if not reports:
        return f"rank {error.error_index} failed: {error}"
    first = reports[0]
    others = sorted(int(f.name.removeprefix("error-")) for f in reports[1:])
    also = f" (then ranks {others} failed too)" if others else ""
    return f"rank {first.name.removeprefix('error-')} failed{also}: {first.read_text()}"


def _run_rank(rank, fn, world, init, backend, timeout_s, args) -> None:
    dist.init_process_group(
        backend,
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:  # processes on one CPU share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        fn(rank, *args)
    except Exception as error:
        report = Path(init).with_name(f"error-{rank}")
        report.write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


def context_parallel(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    method: str = "ring",
    load_balance: bool = False,
    fsdp: bool = False,
) -> None:
    """Give every attention of ``model`` (an encoder or a module holding one as ``.encoder``),
    and the encoder (for its positions), a ``context.ContextParallel`` over ``mesh``'s "seq" group (none when it is 1). Each rank
    then takes its rows of the sequence (:func:`slice_sequence`, with the same
    ``load_balance``); the model's default positions are their global ones, and each
    attention runs ``context.context_attention`` over the group. ValueError for an image
    model (its patch positions are added over the whole sequence), and with ``fsdp``
    (its sharded parameters bypass the hooks that sum each gradient over the group).
    Gradients come out summed over the group (:func:`_summed_over`)."""
    encoder = model if isinstance(model, TransformerEncoder) else model.encoder
    _check_context(encoder, mesh, fsdp)
    plan_ = context.ContextParallel(
        mesh["seq"].get_group(), method=method, load_balance=load_balance
    )
    plan_ = plan_ if mesh["seq"].size() > 1 else None
    encoder.context_parallel = plan_
    for layer in encoder.encoder.layers:
        layer.attention.context_parallel = plan_
    for handle in getattr(model, "_seq_gradient_hooks", ()):
        handle.remove()
    model._seq_gradient_hooks = []
    if plan_ is not None:
        group = mesh["seq"].get_group()
        for param in model.parameters():  # a task head's too
            model._seq_gradient_hooks.append(param.register_hook(_summed_over(group)))


def _check_context(encoder: TransformerEncoder, mesh: DeviceMesh, fsdp: bool) -> None:
    """What PyTorch's context parallelism refuses on a seq axis > 1, before anything is
    sharded: FSDP and image models (ValueError)."""
    if mesh["seq"].size() == 1:
        return
    if fsdp:
        raise ValueError(
            "context parallelism in PyTorch sums gradients over seq by parameter hooks, "
            "which FSDP's sharded parameters bypass: expected fsdp=False with seq > 1"
        )
    if encoder.config.image_size:
        raise ValueError(
            "context parallelism splits token sequences: expected a text model on a seq "
            f"axis > 1, got an image model (image_size={encoder.config.image_size})"
        )


def _summed_over(group):
    """A parameter's gradient hook: the sum of the gradients the group's ranks computed.

    Every "seq" rank holds the whole parameter but only its rows of the sequence, so its
    backward gives the gradient of its rows' share of the loss; the hook all-reduces that
    before it is accumulated into ``.grad`` (gradient accumulation over several backward
    passes stays right). A rank's loss must be its rows' part of the global loss (e.g. the
    sum of its token losses over the global token count)."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad.to_local() if isinstance(grad, DTensor) else grad, group=group)
        return grad

    return hook


def slice_sequence(batch, mesh: DeviceMesh, *, load_balance: bool = False):
    """This "seq" rank's rows of a batch's sequence axis (an array or a dict of arrays,
    (B, T, ...) each): the positions ``shared.parallel.seq_positions`` gives it, in order.
    Apply after :func:`slice_batch`. ValueError if T does not divide into seq shards (2 seq
    chunks with ``load_balance``). NumPy stays NumPy, tensors stay tensors."""
    seq, rank = mesh["seq"].size(), mesh["seq"].get_local_rank()

    def cut(x):
        rows = plan.seq_positions(x.shape[1], seq, rank, load_balance=load_balance)
        return x[:, torch.as_tensor(rows, device=x.device)] if torch.is_tensor(x) else x[:, rows]

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    return cut(batch)
