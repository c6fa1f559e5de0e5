"""Peak matmul rates: datasheet figures for known accelerators, and the measured peak.

Utilisation is reported twice per row: against a large square matmul measured in the same
run, with the same framework, device, dtype and precision settings (the rate this software
can actually reach here), and, for known GPUs and TPUs, against the vendor's dense peak.
"""

from __future__ import annotations

import dataclasses

from shared.flops import matmul_flops

__all__ = ["DATASHEET_TFLOPS", "MeasuredPeak", "datasheet_tflops", "peak_matmul_size"]

# Dense (no sparsity) TFLOP/s from the vendors' datasheets, by device name fragment, checked
# in this order (more specific names first). "float32" is plain FP32 (CUDA cores), "tf32" the
# tensor-core TF32 rate. TPUs: bfloat16 per chip; float32 at "highest" precision is emulated
# with several bfloat16 passes and has no datasheet figure.
DATASHEET_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
    ("H100 NVL", {"bfloat16": 835.0, "tf32": 418.0, "float32": 60.0}),
    ("H100", {"bfloat16": 989.0, "tf32": 495.0, "float32": 67.0}),  # SXM
    ("H200", {"bfloat16": 989.0, "tf32": 495.0, "float32": 67.0}),  # SXM
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),  # v5e, as JAX names it
    ("TPU v5e", {"bfloat16": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0}),
    ("TPU v5", {"bfloat16": 459.0}),  # v5p, as JAX names it
    ("TPU v6 lite", {"bfloat16": 918.0}),  # v6e (Trillium), as JAX names it
    ("TPU v6e", {"bfloat16": 918.0}),
)


def datasheet_tflops(device_name: str | None, dtype: str, *, tf32: bool) -> float | None:
    """The datasheet peak for this device and dtype, or None if unknown (every CPU).

    ``tf32``: whether float32 matmuls ran as TF32 (then the TF32 figure applies).
    """
    if not device_name:
        return None
    key = "tf32" if (dtype == "float32" and tf32) else dtype
    for fragment, peaks in DATASHEET_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peaks.get(key)
    return None


@dataclasses.dataclass(frozen=True)
class MeasuredPeak:
    """Median rate of an (n, n) @ (n, n) product, timed like the rows."""

    framework: str
    device: str
    dtype: str
    n: int
    median_s: float

    @property
    def tflops(self) -> float:
        return matmul_flops(self.n, self.n, self.n) / self.median_s / 1e12


def peak_matmul_size(device: str) -> int:
    """Matrix side for the peak measurement: big enough to saturate the device, but quick.

    On a CPU, 2048 (17 GFLOP, a tenth of a second on two cores); on accelerators 8192.
    """
    return 2048 if device == "cpu" else 8192
