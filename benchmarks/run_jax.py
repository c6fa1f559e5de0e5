"""The JAX side: build each variant from format-v1 weights, and turn a case into a
:class:`~benchmarks.harness.Workload` (eager, or under ``jax.jit``).

The model is timed as a pure function: ``nnx.split`` separates the module into a static
graph definition and its state (parameters, and the rest), and the timed functions take
the state as arguments and ``nnx.merge`` it back inside. ``jax.jit`` of such a function
costs nothing per call beyond JAX's dispatch, whereas ``nnx.jit`` would walk the module's
object graph in Python on every call (docs/pitfalls.md, "Benchmarks").

Phases, as in ``run_torch`` (loss ``mean(h**2)`` over float32 hidden states):

* forward: eval mode;
* forward_backward: ``jax.grad`` of the loss with respect to the parameters;
* train_step: ``jax_impl.train.train_step``, the step users train with (gradient, clipping,
  AdamW with its schedule, the same hyperparameters as torch's), with the loss above, all in
  one function; compiled, it is one ``jax.jit`` executable, with the parameters and optimizer
  state donated so that they are updated in place, as torch does.

Compiled: ``jax.jit(f).lower(*args).compile()``, timed (tracing and lowering included).
Eager: the same Python function called without ``jax.jit``; JAX then runs it op by op.

On a mesh (``case.mesh``, in a child process that sees the mesh's devices, started by
``benchmarks.mesh``): the model goes to ``jax_impl.parallel.parallelize`` and the batch to
``parallel.place_batch``; the same functions then run sharded.

keras-hub's backbone (the ``keras`` peer, ``benchmarks.peers``) is a Keras model, not an
``nnx.Module``: in a child process with ``KERAS_BACKEND=jax``, ``FUNCTIONS`` gives the same
pure functions of its variables (``stateless_call``), compiled, donated and timed alike.

Peak memory, one definition: the working memory of one call on one device. Compiled on an
accelerator or on a mesh, XLA's buffer assignment (:func:`planned_working_bytes`); on one
CPU device, the process's resident memory sampled during one call.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_impl
import jax_impl.native
import jax_impl.train
from benchmarks import peers
from benchmarks.harness import PeakRss, Workload, time_calls
from benchmarks.peaks import MeasuredPeak, peak_matmul_size
from benchmarks.suites import Case
from benchmarks.variants import Variant, variant
from benchmarks.variants import variant as lookup
from shared.config import EncoderConfig
from shared.training import TrainConfig

__all__ = [
    "BUILDERS",
    "FUNCTIONS",
    "JaxRunner",
    "NativeModel",
    "build_model",
    "planned_working_bytes",
]

JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# every parameter trained (the key bias too), AdamW as in the training examples
TRAIN = TrainConfig(learning_rate=1e-4, weight_decay=0.01, freeze_key_bias=False)


class NativeModel(nnx.Module):
    """Our embeddings, then an encoder stack of Flax's ``nnx.MultiHeadAttention`` layers
    (``jax_impl.native``), as ``run_torch.NativeModel`` pairs ours with PyTorch's."""

    def __init__(self, embeddings: nnx.Module, stack: nnx.Module) -> None:
        self.embeddings = embeddings
        self.stack = stack

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x, _ = self.embeddings(input_ids)  # (B, T, D); no padding mask here
        return self.stack(x)  # (B, T, D)


def _build_ours(
    v: Variant, cfg: EncoderConfig, weights: dict, dtype: Any, *, remat: str = "none"
) -> nnx.Module:
    if remat == "none":
        return jax_impl.from_weights(weights, cfg, backend=v.backend, dtype=dtype)
    model = jax_impl.TransformerEncoder(
        cfg, backend=v.backend, dtype=dtype, remat=remat, rngs=nnx.Rngs(0)
    )
    jax_impl.import_weights(model, weights)
    model.eval()
    return model


def _build_native(v: Variant, cfg: EncoderConfig, weights: dict, dtype: Any) -> nnx.Module:
    ours = jax_impl.from_weights(weights, cfg, dtype=dtype)
    stack = jax_impl.native.native_encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0))
    jax_impl.native.import_encoder(stack, weights)
    return NativeModel(ours.embeddings, stack)


# implementation (benchmarks.variants) -> builder; a peer is one more entry
BUILDERS: dict[str, Callable[[Variant, EncoderConfig, dict, Any], nnx.Module]] = {
    "ours": _build_ours,
    "native": _build_native,
}


def keras_function(phase: str, cfg: EncoderConfig, weights: dict, dtype: str, ids: Any):
    """keras-hub's backbone (Keras's JAX backend, in a child process with KERAS_BACKEND=jax)
    as :meth:`JaxRunner._pure_function` gives ours: ``(function, arguments, donated)``."""
    from benchmarks.peers import keras_bert

    return keras_bert.jax_function(phase, cfg, weights, dtype, ids, TRAIN)


# implementation -> its pure functions, for a peer that is not an nnx.Module (a Keras model)
FUNCTIONS: dict[str, Callable[..., tuple[Callable, tuple, tuple[int, ...]]]] = {
    "keras": keras_function,
}


def build_model(
    name: str,
    cfg: EncoderConfig,
    weights: dict[str, np.ndarray],
    *,
    dtype: str,
    remat: str = "none",
) -> nnx.Module:
    """The model of variant ``name`` (``benchmarks.variants``) holding ``weights``, with
    activation checkpointing ``remat`` (ours only), on JAX's default device (the caller's
    ``jax.default_device``)."""
    v = variant(name)
    if v.implementation not in BUILDERS:
        raise ValueError(f"no JAX builder for {v.implementation!r} (variant {name!r})")
    kwargs = _remat_kwargs(v, remat)
    return BUILDERS[v.implementation](v, cfg, weights, JAX_DTYPES[dtype], **kwargs)


def _remat_kwargs(v: Variant, remat: str) -> dict[str, str]:
    """``{"remat": remat}`` for our model; ValueError for another implementation's."""
    if remat == "none":
        return {}
    if v.implementation != "ours":
        raise ValueError(f"remat={remat!r} applies to ours-* variants only, got {v.name!r}")
    return {"remat": remat}


def planned_working_bytes(compiled: Any) -> int | None:
    """Working memory of one call of a compiled program on one device, as XLA's buffer
    assignment plans it: temporaries plus outputs, less the outputs that reuse donated
    inputs (those were already there). None where XLA gives no memory analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes)


def _loss(graphdef, params, rest, ids):
    h = nnx.merge(graphdef, params, rest)(ids)  # (B, T, D)
    return jnp.mean(jnp.square(h.astype(jnp.float32)))


def square_loss(model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, None]:
    """The benchmarks' stand-in loss for ``train_step``: ``sum(h**2)`` over float32 states."""
    return jnp.sum(jnp.square(model(batch["input_ids"]).astype(jnp.float32))), None


class JaxRunner:
    """Runs cases on one JAX device (CPU, GPU or TPU)."""

    framework = "jax"

    def __init__(self, device: str) -> None:
        self.device_kind = device
        self.device = jax.devices(device)[0]

    def unsupported(self, case: Case) -> str | None:
        """Why this runner cannot run ``case``, or None if it can."""
        v = variant(case.variant)
        if v.implementation not in {**BUILDERS, **FUNCTIONS} or "jax" not in v.frameworks:
            return f"no JAX builder for {v.implementation}"
        if peers.missing(v):
            return peers.missing(v)
        if case.mesh.devices > 1 and not v.shardable:
            return f"the sharding plan covers our encoder only, not {v.name}"
        return None

    @staticmethod
    def sync(out: Any) -> None:
        jax.block_until_ready(out)

    @staticmethod
    def release() -> None:
        """Free what the last row left behind: compiled executables and their buffers."""
        jax.clear_caches()
        gc.collect()

    # --- parity and peak ----------------------------------------------------------------

    def forward_output(
        self, variant: str, cfg: EncoderConfig, weights: dict, dtype: str, ids: np.ndarray
    ) -> np.ndarray:
        """Eval-mode hidden states (B, T, D) as float32 NumPy, for the parity check."""
        with jax.default_device(self.device):
            implementation = lookup(variant).implementation
            if implementation in FUNCTIONS:
                fn, args, _ = FUNCTIONS[implementation]("forward", cfg, weights, dtype, ids)
                h = jax.jit(fn)(*args)
            else:
                model = build_model(variant, cfg, weights, dtype=dtype)
                model.eval()
                graphdef, state = nnx.split(model)
                h = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(ids))
        return np.asarray(h.astype(jnp.float32))

    def matmul_peak(self, dtype: str, *, repeats: int = 10) -> MeasuredPeak:
        """Median time of an (n, n) @ (n, n) product under ``jax.jit``, at the run's precision."""
        n = peak_matmul_size(self.device_kind)
        keys = jax.random.split(jax.random.key(0))
        with jax.default_device(self.device):
            a, b = (jax.random.normal(k, (n, n), dtype=JAX_DTYPES[dtype]) for k in keys)
            matmul = jax.jit(jnp.matmul).lower(a, b).compile()
            for _ in range(2):
                self.sync(matmul(a, b))
            times = time_calls(lambda: matmul(a, b), self.sync, repeats)
        return MeasuredPeak("jax", self.device_kind, dtype, n, float(np.median(times)))

    # --- workloads ------------------------------------------------------------------------

    def workload(
        self,
        case: Case,
        cfg: EncoderConfig,
        weights: dict,
        ids: np.ndarray,
        *,
        warm_compile: bool = True,
    ) -> Workload:
        """``case`` ready to time: model built (and sharded on a mesh) and split, compiled
        if asked (cold compile time measured, and warm unless ``warm_compile`` is false)."""
        sharded = case.mesh.devices > 1
        with jax.default_device(self.device):
            if case.implementation in FUNCTIONS:
                make = FUNCTIONS[case.implementation]
                fn, args, donate = make(case.phase, cfg, weights, case.dtype, jnp.asarray(ids))
                args = jax.device_put(args, self.device)
                return self._workload(case, fn, args, donate, False, warm_compile=warm_compile)
            model = build_model(case.variant, cfg, weights, dtype=case.dtype, remat=case.remat)
            if case.phase == "forward":
                model.eval()
            else:
                model.train()  # dropout is 0 in every preset: train mode changes no numbers
            inputs: Any = ids
            if sharded:
                from jax_impl import parallel

                mesh = parallel.make_mesh(**case.mesh.sizes)
                model = parallel.parallelize(
                    model, mesh, fsdp=case.mesh.fsdp, context=case.mesh.context
                )
                inputs = parallel.place_batch(ids, mesh)
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            fn, args, donate = self._pure_function(case.phase, graphdef, params, rest, inputs)
            if not sharded:  # committed to the device: eager ops and compiled calls run there
                args = jax.device_put(args, self.device)
        return self._workload(case, fn, args, donate, sharded, warm_compile=warm_compile)

    def _workload(
        self,
        case: Case,
        fn: Callable,
        args: tuple,
        donate: tuple[int, ...],
        sharded: bool,
        *,
        warm_compile: bool = True,
    ) -> Workload:
        """The pure function ``fn`` of ``args`` ready to time (compiled if asked)."""
        state = {"args": args}
        compiled = None
        work = Workload(step=lambda: None, sync=self.sync)
        if case.mode == "compiled":
            options = self._compiler_options(case)
            if options:
                work.notes.append(f"XLA compiler options {options}")
            # cold: JAX's persistent cache is empty (a fresh directory for this run);
            # warm: in-memory caches cleared, compiled again from the persistent cache.
            compiled, work.compile_s_cold = self._compile(fn, args, donate, options)
            if warm_compile:
                jax.clear_caches()
                compiled, work.compile_s_warm = self._compile(fn, args, donate, options)
        call = compiled if compiled is not None else fn

        def step() -> Any:
            out = call(*state["args"])
            if case.phase == "train_step":  # thread the new parameters and optimizer state
                new_params, new_opt_state, _ = out
                state["args"] = (new_params, new_opt_state, *state["args"][2:])
            return out

        work.step = step
        work.memory_probe = lambda: self._memory(step, compiled, sharded=sharded)
        work.kernel_probe = lambda: self._kernel(step, fn, state["args"], case)
        return work

    def _pure_function(self, phase: str, graphdef, params, rest, ids: Any):
        """``(function, its arguments, argument numbers to donate when compiled)``."""
        if phase == "forward":

            def forward(params, rest, ids):
                return nnx.merge(graphdef, params, rest)(ids)

            return forward, (params, rest, ids), ()
        if phase == "forward_backward":

            def forward_backward(params, rest, ids):
                return jax.grad(_loss, argnums=1)(graphdef, params, rest, ids)

            return forward_backward, (params, rest, ids), ()
        tx = jax_impl.train.make_optimizer(TRAIN)
        trainable = jax_impl.train.trainable_filter(TRAIN)
        n_targets = jnp.float32(np.size(ids) * params["embeddings"]["token"]["embedding"].shape[1])

        def train_step(params, opt_state, rest, ids):
            # dropout is 0 in every preset: the new ``rest`` (RNG counters) is not threaded
            params, _, opt_state, loss, _ = jax_impl.train.train_step(
                graphdef,
                trainable,
                tx,
                TRAIN.max_grad_norm,
                params,
                rest,
                opt_state,
                [{"input_ids": ids}],
                n_targets,
                loss_fn=square_loss,
            )
            return params, opt_state, loss

        return train_step, (params, tx.init(params), rest, ids), (0, 1)

    def warm_up_compiler(self) -> float:
        """Compile a throwaway function once, so that XLA's one-time start-up is not charged
        to the first row. Returns seconds."""
        t0 = time.perf_counter()
        with jax.default_device(self.device):
            x = jnp.ones(8)
            self.sync(jax.jit(lambda y: y * 2 + 1)(x))
        jax.clear_caches()
        return time.perf_counter() - t0

    def _compiler_options(self, case: Case) -> dict[str, str]:
        """XLA's options for ``case``: a row with a backward on a CPU is compiled with
        XLA:CPU's memory-optimised scheduler, as ``jax_impl.train.Trainer`` compiles its
        step (``jax_impl.train.compiler_options``); a forward row with XLA's defaults."""
        if case.phase == "forward":
            return {}
        return jax_impl.train.compiler_options(self.device.platform)

    def _compile(
        self, fn: Callable, args: tuple, donate: tuple[int, ...], options: dict[str, str]
    ) -> tuple[Any, float]:
        t0 = time.perf_counter()
        jitted = jax.jit(fn, donate_argnums=donate, compiler_options=options or None)
        compiled = jitted.lower(*args).compile()
        return compiled, time.perf_counter() - t0

    def _memory(self, step, compiled, *, sharded: bool = False) -> tuple[int | None, str]:
        """One call with its memory measured: ``(peak bytes or None, how)``."""
        if self.device_kind == "cpu" and not sharded:
            with PeakRss() as rss:
                self.sync(step())
            if rss.peak_bytes is None:
                return None, "unavailable (no /proc/self/statm)"
            return rss.peak_bytes, "rss_sampled"
        self.sync(step())
        if compiled is None:
            return None, "unavailable (eager: XLA's peak counter cannot be reset)"
        planned = planned_working_bytes(compiled)
        if planned is None:
            return None, "unavailable (no memory_analysis)"
        return planned, "xla_buffer_assignment"

    def _kernel(self, step, fn: Callable, args: tuple, case: Case) -> str:
        """One call; the attention kernel, read from the lowered program on GPUs. Our flash
        backend is written out (``lax`` loops over blocks): ``flash-ours``."""
        label = "xla"
        if case.backend == "flash":
            label = "flash-ours (lax loops)"
        elif self.device_kind == "gpu":
            text = jax.jit(fn).lower(*args).as_text()
            if "cudnn$fmha" in text:  # the custom call of cuDNN's fused attention
                label = "cudnn-fmha"
        self.sync(step())
        return label if case.mode == "compiled" else f"{label} (op by op)"
