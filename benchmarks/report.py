"""Results out: the table printed at the end of a run, ``results.json`` and ``results.csv``."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema import ROW_FIELDS, SCHEMA, validate_results

__all__ = ["format_table", "results_document", "write_csv", "write_json"]

# (header, row field, format: a str.format pattern, or "percent", "mib", "compile");
# a field of None prints as "-"
_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("framework", "framework", "{}"),
    ("impl", "implementation", "{}"),
    ("backend", "backend", "{}"),
    ("kernel", "kernel", "{}"),
    ("mode", "mode", "{}"),
    ("phase", "phase", "{}"),
    ("dtype", "dtype", "{}"),
    ("B", "batch", "{}"),
    ("T", "seq_len", "{}"),
    ("median ms", "median_ms", "{:.2f}"),
    ("IQR ms", "spread_ms", "{:.2f}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("TFLOP/s", "tflops", "{:.3g}"),
    ("util %", "utilization", "percent"),
    ("best %", "utilization_best_gemm", "percent"),
    ("sheet %", "utilization_datasheet", "percent"),
    ("mem MiB", "peak_memory_bytes", "mib"),
    ("compile s", "compile_s_cold", "compile"),
    ("parity", "parity_max_abs_diff", "{:.1e}"),
)
_TEXT_FIELDS = {"framework", "implementation", "backend", "kernel", "mode", "phase", "dtype"}


def _cell(row: dict[str, Any], field: str, fmt: str) -> str:
    value = row.get(field)
    if value is None:
        return "-"
    if fmt == "mib":
        return f"{value / 2**20:,.1f}"
    if fmt == "compile":
        warm = row.get("compile_s_warm")
        return f"{value:.1f}/{warm:.1f}" if warm is not None else f"{value:.1f}"
    if fmt == "percent":
        return f"{100 * value:.0f}"
    if field == "parity_max_abs_diff" and row.get("parity_ok") is False:
        return fmt.format(value) + "!"
    return fmt.format(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table, one line each, grouped by shape as they ran."""
    if not rows:
        return "(no rows)"
    header = [h for h, _, _ in _COLUMNS]
    cells = [[_cell(r, f, fmt) for _, f, fmt in _COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    numeric = {i for i, (_, f, _) in enumerate(_COLUMNS) if f not in _TEXT_FIELDS}

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    previous = None
    for row, c in zip(rows, cells, strict=True):
        shape = (row["config"], row["dtype"], row["batch"], row["seq_len"])
        if previous is not None and shape != previous:
            out.append("")
        previous = shape
        out.append(line(c))
    return "\n".join(out)


LEGEND = """\
median ms: median wall time of one call; IQR ms: interquartile range of the timed calls.
TFLOP/s: analytic model FLOPs (shared/flops.py) / median time. util %: of the matmul peak
measured in this run for the same framework, device and dtype; best %: of the best matmul
peak of any framework in this run (a framework's BLAS, not the model, may be the limit); sheet %: of the datasheet
peak (known GPUs/TPUs only). mem MiB: peak working memory of one call (memory_method in
results.json says how). compile s: cold/warm compile time (compiled rows). parity: max
|torch - jax| of the pair's forward outputs; "!" marks one outside shared/tolerances.py."""


def results_document(
    *,
    environment: dict[str, Any],
    settings: dict[str, Any],
    peaks: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    interrupted: bool = False,
) -> dict[str, Any]:
    """The ``results.json`` document, validated against ``benchmarks.schema``."""
    doc = {
        "schema": SCHEMA,
        "environment": environment,
        "settings": settings,
        "peaks": peaks,
        "rows": rows,
        "skipped": skipped,
        "failures": failures,
        "interrupted": interrupted,
    }
    validate_results(doc)
    return doc


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in ROW_FIELDS})
