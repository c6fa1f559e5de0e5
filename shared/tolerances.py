"""The one tolerance table: how close two results must be, by dtype and device.

Tests, benchmarks and reports read it; nothing loosens it locally. A comparison passes when

    max |actual - expected|  <=  atol + rtol * max |expected|

over the whole tensor: the error is measured against the tensor's scale, so gradients of
any magnitude and hidden states of unit scale are held to the same relative standard.

Why these numbers:

* float64: both sides are correct to ~1e-15 per operation; 1e-10 leaves room for a few
  thousand accumulated roundings and still catches any real bug (a wrong eps is ~1e-6).
* float32 at full matmul precision (``jax_default_matmul_precision="highest"``, TF32 off in
  PyTorch): 1e-5 on outputs of unit scale, the figure at which Hugging Face's PT/Flax
  equivalence tests settled ("if an error > 1e-5, I always found a bug").
* bfloat16 against a float32 reference: bfloat16 keeps 8 significant bits (unit roundoff
  2^-8 ~ 3.9e-3); a few layers of it give relative errors of about 1e-2.
* training: 200 optimizer steps in float32 on both sides; Adam's update divides by
  sqrt(v), which amplifies last-bit differences early on, so weights drift further apart
  than a single forward pass does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TRAINING", "Tolerance", "assert_close", "max_abs_diff", "tolerance"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def bound(self, expected: np.ndarray) -> float:
        scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
        return self.atol + self.rtol * scale


_TABLE: dict[tuple[str, str], Tolerance] = {
    ("float64", "cpu"): Tolerance(atol=1e-10, rtol=1e-10),
    ("float64", "gpu"): Tolerance(atol=1e-10, rtol=1e-10),
    ("float32", "cpu"): Tolerance(atol=1e-5, rtol=1e-5),
    ("float32", "gpu"): Tolerance(atol=1e-5, rtol=1e-5),
    ("float32", "tpu"): Tolerance(atol=1e-5, rtol=1e-5),
    ("bfloat16", "cpu"): Tolerance(atol=0.0, rtol=3e-2),
    ("bfloat16", "gpu"): Tolerance(atol=0.0, rtol=3e-2),
    ("bfloat16", "tpu"): Tolerance(atol=0.0, rtol=3e-2),
}

TRAINING = Tolerance(atol=1e-4, rtol=1e-4)  # final weights after training in float32


def tolerance(dtype: str, device: str = "cpu") -> Tolerance:
    """The row for ``dtype`` ("float64", "float32", "bfloat16") on ``device`` ("cpu", "gpu", "tpu")."""
    try:
        return _TABLE[(str(dtype), str(device))]
    except KeyError:
        raise ValueError(
            f"no tolerance for dtype={dtype!r} on device={device!r}; known: {sorted(_TABLE)}"
        ) from None


def max_abs_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(actual, expected, tol: Tolerance, what: str = "arrays") -> None:
    """Raise ``AssertionError`` with the max difference, its place and the bound, unless close."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {a.shape} vs {b.shape}")
    if not np.all(np.isfinite(a)):
        raise AssertionError(f"{what}: actual holds {np.sum(~np.isfinite(a))} non-finite values")
    diff = np.abs(a - b)
    bound = tol.bound(b)
    worst = float(diff.max()) if diff.size else 0.0
    if worst > bound:
        where = np.unravel_index(int(diff.argmax()), diff.shape)
        raise AssertionError(
            f"{what}: max abs diff {worst:.3g} at {tuple(int(i) for i in where)} exceeds "
            f"{bound:.3g} (atol {tol.atol:g} + rtol {tol.rtol:g} * scale {np.max(np.abs(b)):.3g})"
        )
