"""The shape of ``results.json``: ``{"schema", "environment", "settings", "peaks", "rows",
"skipped", "failures"}``, every row with the fields below (``None`` where a value does not
apply or could not be measured). ``results.csv`` has one line per row, in this field order.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ENVIRONMENT_FIELDS",
    "ROW_FIELDS",
    "SCHEMA",
    "validate_results",
    "validate_row",
]

SCHEMA = "twin-encoder-benchmarks/1"

_OPT_INT = (int, type(None))
_OPT_FLOAT = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_BOOL = (bool, type(None))

# field: (allowed types, meaning)
ROW_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "framework": ((str,), "torch or jax"),
    "implementation": (
        (str,),
        "ours (this project's encoder) or native (the framework's own modules)",
    ),
    "backend": (
        (str,),
        "an attention backend of shared/backends.py (math, fused, flash), or native",
    ),
    "kernel": (_OPT_STR, "the attention kernel that actually ran, where the framework says"),
    "mode": ((str,), "eager, or compiled (torch.compile / jax.jit)"),
    "phase": ((str,), "forward, forward_backward, or train_step (forward, backward, AdamW)"),
    "device": ((str,), "cpu, gpu or tpu"),
    "device_name": (_OPT_STR, "what the framework calls the device"),
    "dtype": ((str,), "float32 or bfloat16 (parameters and activations)"),
    "precision": ((str,), "how float32 matmuls ran: float32 or tf32"),
    "batch": ((int,), "sequences per call (B)"),
    "seq_len": ((int,), "tokens per sequence (T); no padding"),
    "config": ((str,), "model preset name, or the JSON file's stem"),
    "median_ms": ((int, float), "median wall time of one call, in milliseconds"),
    "spread_ms": ((int, float), "interquartile range of the timed calls, in milliseconds"),
    "min_ms": ((int, float), "fastest timed call, in milliseconds"),
    "repeats": ((int,), "number of timed calls"),
    "tokens_per_s": ((int, float), "batch * seq_len / median time"),
    "flops": ((int,), "analytic FLOPs of one call (shared/flops.py)"),
    "tflops": ((int, float), "flops / median time, in TFLOP/s"),
    "peak_tflops_measured": (
        _OPT_FLOAT,
        "large-matmul rate measured in this run (same framework, device, dtype)",
    ),
    "utilization": (_OPT_FLOAT, "tflops / peak_tflops_measured"),
    "utilization_best_gemm": (
        _OPT_FLOAT,
        "tflops / the best matmul peak of any framework in this run (same device, dtype)",
    ),
    "peak_tflops_datasheet": (
        _OPT_FLOAT,
        "vendor's dense peak for this device and dtype, if known",
    ),
    "utilization_datasheet": (_OPT_FLOAT, "tflops / peak_tflops_datasheet"),
    "peak_memory_bytes": (_OPT_INT, "peak working memory of one call (see memory_method)"),
    "memory_method": ((str,), "how peak_memory_bytes was measured"),
    "compile_s_cold": (_OPT_FLOAT, "compile time with empty caches (compiled mode only)"),
    "compile_s_warm": (_OPT_FLOAT, "compile time again, with the persistent caches filled"),
    "parity_max_abs_diff": (
        _OPT_FLOAT,
        "max |torch - jax| of the forward outputs, same weights and inputs",
    ),
    "parity_ok": (
        _OPT_BOOL,
        "parity_max_abs_diff within shared/tolerances.py for this dtype and device",
    ),
    "threads": (_OPT_INT, "torch intra-op threads (XLA uses all usable cores)"),
    "notes": ((str,), "anything else a reader must know about this row"),
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


def validate_row(row: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that is missing, extra or mistyped."""
    missing = [f for f in ROW_FIELDS if f not in row]
    extra = [f for f in row if f not in ROW_FIELDS]
    if missing or extra:
        raise ValueError(f"row fields: missing {missing}, unexpected {extra}")
    for name, (types, _) in ROW_FIELDS.items():
        value = row[name]
        # bool is an int in Python: accept it only where bool is meant
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"row field {name!r} is a bool, expected {types}")
        if not isinstance(value, types):
            raise ValueError(
                f"row field {name!r}={value!r} has type {type(value).__name__}, expected {types}"
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
        validate_row(row)
