"""The shape of ``results.json``: ``{"schema", "environment", "settings", "peaks", "rows",
"skipped", "failures", "interrupted"}``, every row a :class:`Row` (``None`` where a value
does not apply or could not be measured). ``results.csv`` has one line per row, in the
field order of :class:`Row`. Both are written from ``dataclasses.asdict``.

Rows written before a field existed read back with its value for them (:data:`ADDED_FIELDS`:
no best-GEMM utilisation; one device, no collectives).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ADDED_FIELDS", "ENVIRONMENT_FIELDS", "ROW_FIELDS", "SCHEMA", "Row", "validate_results"]

SCHEMA = "twin-encoder-benchmarks/1"


def _doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, metadata={"doc": text})


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured row of a run. Times in milliseconds, memory in bytes, rates in TFLOP/s."""

    framework: str = _doc("torch or jax")
    implementation: str = _doc(
        "ours (this project's encoder), native (the framework's own modules), or a peer: "
        "hf (transformers' BertModel) or keras (keras-hub's BertBackbone)"
    )
    backend: str = _doc(
        "ours: an attention backend of shared/backends.py (math, fused, flash); native; hf: "
        "its attn_implementation (sdpa or eager); keras"
    )
    kernel: str | None = _doc("the attention kernel that actually ran, where it can be told")
    mode: str = _doc("eager, or compiled (torch.compile / jax.jit)")
    phase: str = _doc("forward, forward_backward, or train_step (forward, backward, AdamW)")
    device: str = _doc("cpu, gpu or tpu")
    device_name: str | None = _doc("what the framework calls the device")
    dtype: str = _doc("float32 or bfloat16 (parameters and activations)")
    precision: str = _doc("how float32 matmuls ran: float32 or tf32")
    batch: int = _doc("sequences per call (B), over all devices")
    seq_len: int = _doc("tokens per sequence (T); no padding")
    config: str = _doc("model preset name, or the JSON file's stem")
    median_ms: float = _doc("median wall time of one call")
    spread_ms: float = _doc("interquartile range of the timed calls")
    min_ms: float = _doc("fastest timed call")
    repeats: int = _doc("number of timed calls")
    tokens_per_s: float = _doc("batch * seq_len / median time, over all devices")
    flops: int = _doc("analytic FLOPs of one call (shared/flops.py)")
    tflops: float = _doc("flops / median time")
    peak_tflops_measured: float | None = _doc(
        "large-matmul rate measured in this run (same framework, device, dtype)"
    )
    utilization: float | None = _doc(
        "tflops / peak_tflops_measured (times the devices of a mesh on accelerators; host "
        "devices of one CPU share its cores and its peak)"
    )
    utilization_best_gemm: float | None = _doc(
        "tflops / the best matmul peak of any framework in this run (same device, dtype)"
    )
    peak_tflops_datasheet: float | None = _doc("vendor's dense peak for this device and dtype")
    utilization_datasheet: float | None = _doc("tflops / peak_tflops_datasheet")
    peak_memory_bytes: int | None = _doc(
        "peak working memory of one call on one device (see memory_method)"
    )
    memory_method: str = _doc("how peak_memory_bytes was measured")
    compile_s_cold: float | None = _doc("compile time with empty caches (compiled mode only)")
    compile_s_warm: float | None = _doc(
        "compile time again, with the persistent caches filled (None when the suite skips it)"
    )
    parity_max_abs_diff: float | None = _doc(
        "ours and native: max |torch - jax| of the forward outputs; a peer: max |peer - ours| "
        "(ours-fused, same framework); same weights and inputs"
    )
    parity_ok: bool | None = _doc(
        "parity_max_abs_diff within shared/tolerances.py for this dtype and device"
    )
    threads: int | None = _doc("torch intra-op threads per process (XLA uses all usable cores)")
    notes: str = _doc("anything else a reader must know about this row", "")
    mesh: str = _doc("the device mesh, e.g. data=2,model=2,fsdp; empty on one device", "")
    devices: int = _doc("devices the call runs on", 1)
    collective_bytes: int | None = _doc(
        "analytic bytes one call hands to collectives, per device (shared/parallel.py)", None
    )
    remat: str = _doc(
        "activation checkpointing of the model (shared/backends.py REMATS): none, block "
        "(each encoder layer recomputed in the backward) or attention (each attention "
        "sub-block recomputed)",
        "none",
    )

    def __getitem__(self, name: str) -> Any:
        """``row["median_ms"]``: rows read like the dicts of ``results.json``."""
        if name not in ROW_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A row of a ``results.json``; ``ValueError`` naming missing or unknown fields."""
        data = {**ADDED_FIELDS, **data}
        required = {f.name for f in dataclasses.fields(cls) if _required(f)}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - set(ROW_FIELDS))
        if missing or unknown:
            raise ValueError(f"row fields: missing {missing}, unexpected {unknown}")
        return cls(**data)


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Row))
# fields added after results were committed, with the value they take in those results
ADDED_FIELDS: dict[str, Any] = {
    "utilization_best_gemm": None,
    "mesh": "",
    "devices": 1,
    "collective_bytes": None,
    "remat": "none",
}

ENVIRONMENT_FIELDS = (
    "timestamp_utc",
    "command",
    "platform",
    "cpu",
    "versions",
    "device",
    "threads",
    "precision",
    "compile_caches",
    "skipped_frameworks",
)


def validate_results(doc: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``doc`` has the shape of ``results.json``."""
    for key in ("schema", "environment", "settings", "peaks", "rows", "skipped", "failures"):
        if key not in doc:
            raise ValueError(f"results: missing key {key!r}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results: schema {doc['schema']!r}, expected {SCHEMA!r}")
    missing = [f for f in ENVIRONMENT_FIELDS if f not in doc["environment"]]
    if missing:
        raise ValueError(f"results: environment lacks {missing}")
    for row in doc["rows"]:
        Row.from_dict(row)
