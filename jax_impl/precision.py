"""Float32 matmul precision in JAX: one place that sets it (mirrors ``torch_impl/precision.py``).

Parity needs true float32 matmuls. JAX's default precision is TF32 on recent NVIDIA GPUs and
bfloat16 passes on TPUs (``"highest"`` stops both); PyTorch computes float32 unless TF32 is
allowed, so tests, benchmarks and examples set both frameworks through these two helpers.

:func:`check_dtype` is the one check every constructor and function of ``jax_impl`` that
takes a ``dtype`` makes first: JAX without ``jax_enable_x64`` silently makes float64 arrays
float32, so such a request is refused rather than honoured in half.

Modes: ``"float32"`` (``jax_default_matmul_precision="highest"``), ``"tf32"``
(``"tensorfloat32"``, for benchmarks that compare both frameworks at TF32), ``"default"``
(the platform's own default, ``None``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp

__all__ = ["MODES", "check_dtype", "matmul_precision", "set_matmul_precision", "settings"]

MODES = ("float32", "tf32", "default")
_CONFIG = {"float32": "highest", "tf32": "tensorfloat32", "default": None}


def settings() -> dict[str, object]:
    """The precision flags as they are now, named as benchmark records name them."""
    return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}


def set_matmul_precision(mode: str = "float32") -> dict[str, object]:
    """Set the float32 matmul precision for the whole process; returns :func:`settings`."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {MODES}")
    jax.config.update("jax_default_matmul_precision", _CONFIG[mode])
    return settings()


@contextlib.contextmanager
def matmul_precision(mode: str = "float32") -> Iterator[dict[str, object]]:
    """:func:`set_matmul_precision` for a ``with`` block; the previous flags come back after."""
    saved = settings()
    try:
        yield set_matmul_precision(mode)
    finally:
        jax.config.update("jax_default_matmul_precision", saved["jax_default_matmul_precision"])


def check_dtype(dtype) -> None:
    """Raise ``ValueError`` for a 64-bit ``dtype`` (float64) while ``jax_enable_x64`` is off.

    Without x64, JAX builds float32 parameters for ``dtype=jnp.float64`` and computes in
    float32 without a word (1e-7 from float64 where PyTorch gives 1e-16). ``None`` (the
    float32 default) and 32- and 16-bit dtypes pass.
    """
    if dtype is None:
        return
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(
            f"dtype={dtype!r} must be a floating dtype, e.g. one of "
            "['bfloat16', 'float16', 'float32', 'float64']"
        ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype={dtype.name!r} must be a floating dtype")
    if jax.config.jax_enable_x64:
        return
    if dtype.itemsize == 8:
        raise ValueError(
            f"dtype {dtype.name} needs jax.config.update('jax_enable_x64', True) first "
            f"(without it JAX computes in {dtype.name[:-2]}32)"
        )
