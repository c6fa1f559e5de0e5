"""Float32 matmul precision in PyTorch: one place that sets it (mirrors ``jax_impl/precision.py``).

Parity needs true float32 matmuls. PyTorch computes them in float32 on CPUs and, unless TF32
is allowed, on NVIDIA GPUs; JAX does not (TF32 on recent GPUs, bfloat16 passes on TPUs), so
tests, benchmarks and examples set both frameworks through these two helpers.

Modes: ``"float32"`` (true float32 matmuls and convolutions), ``"tf32"`` (TF32 allowed on
GPUs, for benchmarks that compare both frameworks at TF32), ``"default"`` (the framework's
own defaults: matmuls float32, cuDNN convolutions TF32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["MODES", "as_dtype", "matmul_precision", "set_matmul_precision", "settings"]

MODES = ("float32", "tf32", "default")

# dtype names a constructor takes as strings, as jax_impl takes them
_DTYPE_NAMES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a ``torch.dtype``: a name (``"float32"``, ``"float64"``, ``"bfloat16"``,
    ``"float16"``, as ``jax_impl`` takes them) or a floating ``torch.dtype``; None stays None
    (the default, float32). ValueError naming the choices otherwise."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(
        f"dtype={dtype!r} must be a floating torch.dtype or one of {sorted(_DTYPE_NAMES)}"
    )


def settings() -> dict[str, object]:
    """The precision flags as they are now, named as benchmark records name them."""
    return {
        "torch_cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def set_matmul_precision(mode: str = "float32") -> dict[str, object]:
    """Set the float32 matmul precision for the whole process; returns :func:`settings`."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32 or mode == "default"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return settings()


@contextlib.contextmanager
def matmul_precision(mode: str = "float32") -> Iterator[dict[str, object]]:
    """:func:`set_matmul_precision` for a ``with`` block; the previous flags come back after."""
    saved = settings()
    try:
        yield set_matmul_precision(mode)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved["torch_cuda_matmul_allow_tf32"]
        torch.backends.cudnn.allow_tf32 = saved["torch_cudnn_allow_tf32"]
        torch.set_float32_matmul_precision(saved["torch_float32_matmul_precision"])
