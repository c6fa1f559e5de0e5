"""The PyTorch side: build each variant from format-v1 weights, and turn a case into a
:class:`~benchmarks.harness.Workload` (eager, or under ``torch.compile``).

Phases (the loss is ``mean(h**2)`` over the float32 hidden states, a stand-in whose cost is
negligible; there is no task head):

* forward: eval mode under ``torch.no_grad()`` (so ``nn.TransformerEncoder`` may take its
  inference fast path);
* forward_backward: train mode, ``zero_grad(set_to_none=True)``, loss, ``backward()``;
* train_step: ``torch_impl.train.train_step``, the step users train with (zero_grad, loss,
  backward, gradient clipping, AdamW, schedule), with the loss above. The learning rate is
  held constant: a float that changes every update would recompile ``torch.compile``'s
  optimizer step each time. Compiled, the whole function goes to ``torch.compile``; Dynamo
  breaks the graph at ``backward()`` and compiles the forward (with its AOT backward) and
  the optimizer step.

Compiled modes use ``torch.compile(fn, dynamic=False)``: one static-shape compilation per
shape, as a sequence sweep then compiles per shape (and the rows say so). Inductor's
pattern matcher recognises the written-out attention of the math backend (and of
``hf-eager``) and replaces it with SDPA: a compiled math row then runs the same attention
kernel as a fused row, and its ``kernel`` and notes say so.

The peers (``benchmarks.peers``) are built here too: ``hf`` is ``transformers.BertModel``;
``keras`` is keras-hub's backbone on Keras's torch backend, built only in a child process
whose ``KERAS_BACKEND`` is "torch". Both are PyTorch modules called with token ids and go
through the same phases, optimizer and compilation as ours.

On a mesh (``case.mesh``, in one process per device started by ``benchmarks.mesh``): the
model goes to ``torch_impl.parallel.parallelize`` and each rank gets its slice of the batch;
eager only (a sharded model under ``torch.compile`` is not benchmarked).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

import torch_impl
import torch_impl.native
import torch_impl.train
from benchmarks import peers
from benchmarks.harness import PeakRss, Workload, time_calls, timed
from benchmarks.peaks import MeasuredPeak, peak_matmul_size
from benchmarks.suites import Case
from benchmarks.variants import Variant, variant
from shared.config import EncoderConfig
from shared.training import TrainConfig

__all__ = ["BUILDERS", "NativeModel", "TorchRunner", "build_model"]

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {d: name for name, d in TORCH_DTYPES.items()}
# every parameter trained (the key bias too), AdamW as in the training examples
TRAIN = TrainConfig(learning_rate=1e-4, weight_decay=0.01, freeze_key_bias=False)

# aten operators that name the attention kernel that ran (seen by torch.profiler)
_KERNELS = (
    ("aten::_transformer_encoder_layer_fwd", "fastpath"),
    ("aten::_native_multi_head_attention", "native-mha"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "sdpa-flash-cpu"),
    ("aten::_scaled_dot_product_flash_attention", "sdpa-flash"),
    ("aten::_scaled_dot_product_efficient_attention", "sdpa-mem-efficient"),
    ("aten::_scaled_dot_product_cudnn_attention", "sdpa-cudnn"),
    ("aten::_scaled_dot_product_fused_attention_overrideable", "sdpa-overrideable"),
    ("aten::_scaled_dot_product_attention_math", "sdpa-math"),
)


class NativeModel(nn.Module):
    """Our embeddings, then PyTorch's own ``nn.TransformerEncoder`` (from ``torch_impl.native``).

    The embeddings are ours because PyTorch has no encoder with embeddings; they are the same
    code in the "ours" rows, and cost a gather and an addition.
    """

    def __init__(self, embeddings: nn.Module, stack: nn.TransformerEncoder) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.stack = stack

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, _ = self.embeddings(input_ids)  # (B, T, D); no padding mask here
        return self.stack(x)  # (B, T, D)


def _build_ours(
    v: Variant, cfg: EncoderConfig, weights: dict, dtype: torch.dtype, *, remat: str = "none"
) -> nn.Module:
    if remat == "none":
        return torch_impl.from_weights(weights, cfg, backend=v.backend, dtype=dtype)
    model = torch_impl.TransformerEncoder(cfg, backend=v.backend, dtype=dtype, remat=remat)
    torch_impl.import_weights(model, weights)
    return model.eval()


def _build_native(v: Variant, cfg: EncoderConfig, weights: dict, dtype: torch.dtype) -> nn.Module:
    ours = torch_impl.from_weights(weights, cfg, dtype=dtype)
    stack = torch_impl.native.native_encoder(cfg, dtype=dtype)
    torch_impl.native.import_encoder(stack, weights)
    return NativeModel(ours.embeddings, stack)


def _build_hf(v: Variant, cfg: EncoderConfig, weights: dict, dtype: torch.dtype) -> nn.Module:
    from benchmarks.peers import hf

    return hf.build(cfg, weights, dtype, attention=v.backend)


def _build_keras(v: Variant, cfg: EncoderConfig, weights: dict, dtype: torch.dtype) -> nn.Module:
    from benchmarks.peers import keras_torch  # in a child process with KERAS_BACKEND=torch

    return keras_torch.build(cfg, weights, _DTYPE_NAMES[dtype])


# implementation (benchmarks.variants) -> builder; a peer is one more entry
BUILDERS: dict[str, Callable[[Variant, EncoderConfig, dict, torch.dtype], nn.Module]] = {
    "ours": _build_ours,
    "native": _build_native,
    "hf": _build_hf,
    "keras": _build_keras,
}


def build_model(
    name: str,
    cfg: EncoderConfig,
    weights: dict[str, np.ndarray],
    *,
    dtype: str,
    device: torch.device,
    remat: str = "none",
) -> nn.Module:
    """The model of variant ``name`` (``benchmarks.variants``) holding ``weights``, with
    activation checkpointing ``remat`` (ours only)."""
    v = variant(name)
    if v.implementation not in BUILDERS:
        raise ValueError(f"no PyTorch builder for {v.implementation!r} (variant {name!r})")
    kwargs = _remat_kwargs(v, remat)
    return BUILDERS[v.implementation](v, cfg, weights, TORCH_DTYPES[dtype], **kwargs).to(device)


def _remat_kwargs(v: Variant, remat: str) -> dict[str, str]:
    """``{"remat": remat}`` for our model; ValueError for another implementation's."""
    if remat == "none":
        return {}
    if v.implementation != "ours":
        raise ValueError(f"remat={remat!r} applies to ours-* variants only, got {v.name!r}")
    return {"remat": remat}


class TorchRunner:
    """Runs cases on one device with PyTorch (CPU, CUDA, or TPU through torch_xla)."""

    framework = "torch"

    def __init__(self, device: str, *, threads: int) -> None:
        self.device_kind = device
        self._xm = None
        if device == "cpu":
            self.device = torch.device("cpu")
        elif device == "gpu":
            self.device = torch.device("cuda")
        elif device == "tpu":  # experimental: torch_xla, eager (lazy tensor) mode only
            torch_xla = importlib.import_module("torch_xla")
            self._xm = importlib.import_module("torch_xla.core.xla_model")
            self.device = (
                torch_xla.device() if hasattr(torch_xla, "device") else self._xm.xla_device()
            )
        else:
            raise ValueError(f"unknown device {device!r}")
        torch.set_num_threads(threads)

    # --- what runs where ----------------------------------------------------------------

    def unsupported(self, case: Case) -> str | None:
        """Why this runner cannot run ``case``, or None if it can."""
        v = variant(case.variant)
        if v.implementation not in BUILDERS or "torch" not in v.frameworks:
            return f"no PyTorch builder for {v.implementation}"
        if peers.missing(v):
            return peers.missing(v)
        if case.mesh.devices > 1 and not v.shardable:
            return f"the sharding plan covers our encoder only, not {v.name}"
        if case.mesh.devices > 1 and case.mode == "compiled":
            return "a sharded PyTorch model is benchmarked eager only"
        if self._xm is not None and case.mode == "compiled":
            return "torch on TPU (torch_xla) is benchmarked in its lazy-tensor mode only"
        return None

    def notes(self) -> list[str]:
        return ["experimental: torch_xla"] if self._xm is not None else []

    def sync(self, _out: Any = None) -> None:
        """Wait until the device has finished everything queued."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self._xm is not None:
            self._xm.mark_step()
            self._xm.wait_device_ops()

    def release(self) -> None:
        """Free what the last row left behind: Dynamo's compiled code, cached device memory."""
        torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- parity and peak ----------------------------------------------------------------

    def forward_output(
        self, variant: str, cfg: EncoderConfig, weights: dict, dtype: str, ids: np.ndarray
    ) -> np.ndarray:
        """Eval-mode hidden states (B, T, D) as float32 NumPy, for the parity check."""
        model = build_model(variant, cfg, weights, dtype=dtype, device=self.device).eval()
        with torch.no_grad():
            h = model(torch.as_tensor(ids, device=self.device))
        return h.detach().float().cpu().numpy()

    def matmul_peak(self, dtype: str, *, repeats: int = 10) -> MeasuredPeak:
        """Median time of an (n, n) @ (n, n) product in ``dtype``, under the run's settings."""
        n = peak_matmul_size(self.device_kind)
        gen = torch.Generator().manual_seed(0)
        a, b = (
            torch.randn(n, n, generator=gen).to(self.device, TORCH_DTYPES[dtype]) for _ in range(2)
        )
        for _ in range(2):
            self.sync(a @ b)
        times = time_calls(lambda: a @ b, self.sync, repeats)
        return MeasuredPeak("torch", self.device_kind, dtype, n, float(np.median(times)))

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
        """``case`` ready to time: model built (and sharded on a mesh), compiled if asked
        (cold compile time measured, and warm unless ``warm_compile`` is false)."""
        model = build_model(
            case.variant, cfg, weights, dtype=case.dtype, device=self.device, remat=case.remat
        )
        input_ids = torch.as_tensor(ids, device=self.device)
        if case.mesh.devices > 1:
            from torch_impl import parallel

            mesh = parallel.make_mesh(**case.mesh.sizes)
            model = parallel.parallelize(
                model, mesh, fsdp=case.mesh.fsdp, context=case.mesh.context
            )
            input_ids = parallel.slice_sequence(parallel.slice_batch(input_ids, mesh), mesh)
        fn = self._step_function(
            case.phase, model, input_ids, cfg.d_model, compiled=case.mode == "compiled"
        )

        work = Workload(step=fn, sync=self.sync, notes=self.notes())
        if case.mode == "compiled":
            # cold: empty caches (fresh directories for this run); warm: Dynamo's in-memory
            # state reset, compiled again with Inductor's on-disk caches now filled.
            # torch.compile compiles inside the first call: the harness subtracts one
            # steady-state call from these times.
            compiled, work.compile_s_cold = self._compile(fn)
            if warm_compile:
                torch._dynamo.reset()
                compiled, work.compile_s_warm = self._compile(fn)
            work.compile_includes_one_call = True
            work.step = compiled
        work.memory_probe = lambda: self._memory(work.step)
        work.kernel_probe = lambda: self._kernel(work.step, case, work.notes)
        return work

    def _step_function(
        self, phase: str, model: nn.Module, ids: torch.Tensor, width: int, *, compiled: bool
    ):
        if phase == "forward":
            model.eval()

            def forward() -> torch.Tensor:
                with torch.no_grad():
                    return model(ids)

            return forward

        model.train()  # dropout is 0 in every preset: train mode changes no numbers
        if phase == "train_step":
            params = torch_impl.train.trainable_parameters(model, TRAIN)
            optimizer, _ = torch_impl.train.make_optimizer(params, TRAIN)
            constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            if compiled:
                _initialise_state(model, optimizer)
            n_targets = float(ids.numel() * width)

            def train_step() -> torch.Tensor:
                loss, _ = torch_impl.train.train_step(
                    model,
                    optimizer,
                    constant,
                    TRAIN.max_grad_norm,
                    [{"input_ids": ids}],
                    n_targets,
                    loss_fn=square_loss,
                )
                return loss

            return train_step

        def step() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            loss = model(ids).float().square().mean()
            loss.backward()
            return loss

        return step

    def warm_up_compiler(self) -> float:
        """Compile a throwaway function once, so that Inductor's one-time start-up (imports,
        compiler checks, worker pool) is not charged to the first row. Returns seconds."""
        x = torch.ones(8, device=self.device)
        _, seconds = timed(lambda: torch.compile(lambda y: y * 2 + 1)(x), self.sync)
        torch._dynamo.reset()
        return seconds

    def _compile(self, fn) -> tuple[Any, float]:
        compiled = torch.compile(fn, dynamic=False)
        _, seconds = timed(compiled, self.sync)
        return compiled, seconds

    def _memory(self, step) -> tuple[int | None, str]:
        """One call with its memory measured: ``(peak bytes or None, how)``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.sync(step())
            peak = torch.cuda.max_memory_allocated(self.device) - before
            return peak, "torch.cuda.max_memory_allocated"
        if self.device.type == "cpu":
            with PeakRss() as rss:
                self.sync(step())
            if rss.peak_bytes is None:
                return None, "unavailable (no /proc/self/statm)"
            return rss.peak_bytes, "rss_sampled"
        self.sync(step())
        return None, "unavailable on torch_xla"

    def _kernel(self, step, case: Case, notes: list[str]) -> str:
        """One call under torch.profiler; the attention kernels it ran, by aten operator.

        Where no SDPA or fast-path operator ran, the row's own written-out attention did:
        ``matmul+softmax`` (math; ``inductor`` compiled) or ``flash-ours`` (our
        FlashAttention-2, whose Python block loops run eagerly even under torch.compile).
        """
        if self._xm is not None:
            self.sync(step())
            return "torch_xla"
        with (
            _stderr_silenced(),  # the profiler prints start/stop lines on the C++ side
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
        ):
            self.sync(step())
        names = {e.name for e in prof.events()}
        found = [label for op, label in _KERNELS if op in names]
        written_out = case.backend in ("math", "eager")  # ours-math, hf-eager
        if written_out and case.mode == "compiled" and found:
            notes.append(
                "Inductor replaced the written-out attention with SDPA: this compiled math "
                "row runs the fused kernel"
            )
            return "+".join(found) + " (Inductor)"
        if found:
            return "+".join(found)
        if written_out:
            return "inductor" if case.mode == "compiled" else "matmul+softmax"
        if case.backend == "flash":
            return "flash-ours (eager loops)"
        return "unknown"


def square_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
    """The benchmarks' stand-in loss for ``train_step``: ``sum(h**2)`` over float32 states."""
    return model(batch["input_ids"]).float().square().sum(), None


def _initialise_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's state (moments, step) with one update from zero gradients.

    AdamW creates its state lazily, in the first ``step()``; a compiled step would be traced
    once without state and then again with it. Doing it here keeps compilation to one trace.
    """
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    model.zero_grad(set_to_none=True)


class _DropProfilerRecordWarning(logging.Filter):
    """Drops Dynamo's "Profiler record function ... will be ignored", logged when a compiled
    function is traced while the kernel probe's profiler runs (harmless: the probe reads the
    operators that ran, not record_function ranges)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Profiler record function")


_DYNAMO_CTX_LOGGER = logging.getLogger("torch._dynamo.variables.ctx_manager")
if not any(isinstance(f, _DropProfilerRecordWarning) for f in _DYNAMO_CTX_LOGGER.filters):
    _DYNAMO_CTX_LOGGER.addFilter(_DropProfilerRecordWarning())


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a moment (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
