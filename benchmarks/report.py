"""Results out: the table and verdict printed at the end of a run, ``results.json`` and
``results.csv`` (both from ``dataclasses.asdict`` of the rows), and reading them back.

The printed table keeps to 120 columns; every field of every row is in the CSV and JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from benchmarks.schema import ROW_FIELDS, SCHEMA, Row, validate_results

__all__ = [
    "LEGEND",
    "WIDTH",
    "format_table",
    "format_verdict",
    "kernel_lines",
    "read_rows",
    "results_document",
    "write_csv",
    "write_json",
]

WIDTH = 120  # columns of the printed table


def _variant(row: Row) -> str:
    if row.implementation in ("native", "keras") or (row.implementation, row.backend) == (
        "hf",
        "sdpa",
    ):
        return row.implementation  # its variant's name (benchmarks.variants)
    return f"{row.implementation}-{row.backend}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _compile(row: Row) -> str:
    if row.compile_s_cold is None:
        return "-"
    if row.compile_s_warm is None:
        return f"{row.compile_s_cold:.1f}"
    return f"{row.compile_s_cold:.1f}/{row.compile_s_warm:.1f}"


def _parity(row: Row) -> str:
    if row.parity_max_abs_diff is None:
        return "-"
    return f"{row.parity_max_abs_diff:.0e}" + ("!" if row.parity_ok is False else "")


_PHASES = {"forward": "fwd", "forward_backward": "fwd+bwd", "train_step": "train"}


def _tokens(value: float) -> str:
    return f"{value:,.0f}" if value < 1e6 else f"{value / 1e6:,.2f}M"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


# (header, cell, right-aligned)
_COLUMNS: tuple[tuple[str, Any, bool], ...] = (
    ("fw", lambda r: r.framework, False),
    ("variant", _variant, False),
    ("mode", lambda r: r.mode, False),
    ("phase", lambda r: _PHASES.get(r.phase, r.phase), False),
    ("B", lambda r: str(r.batch), True),
    ("T", lambda r: str(r.seq_len), True),
    ("ms", lambda r: f"{r.median_ms:,.1f}", True),
    ("±IQR", lambda r: f"{r.spread_ms:.1f}", True),
    ("tok/s", lambda r: _tokens(r.tokens_per_s), True),
    ("util%", lambda r: _percent(r.utilization), True),
    ("MiB", lambda r: _mib(r.peak_memory_bytes), True),
    ("compile s", _compile, True),
    ("parity", _parity, True),
)
_MESH_COLUMN = ("mesh", lambda r: r.mesh or "-", False)
_REMAT_COLUMN = ("remat", lambda r: r.remat, False)


def format_table(rows: Sequence[Row], *, width: int = WIDTH) -> str:
    """The rows as a table of at most ``width`` columns, a blank line between shapes."""
    if not rows:
        return "(no rows)"
    columns = list(_COLUMNS)
    if any(r.mesh for r in rows):
        columns.insert(4, _MESH_COLUMN)
    if any(r.remat != "none" for r in rows):  # shown when a sweep holds a remat policy
        columns.insert(4, _REMAT_COLUMN)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), show_edge=False)
    for header, _, right in columns:
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    previous = None
    for row in rows:
        shape = (row.config, row.dtype, row.batch, row.seq_len)
        if previous is not None and shape != previous:
            table.add_section()
        previous = shape
        table.add_row(*(cell(row) for _, cell, _ in columns))
    return _render(table, width)


def _render(renderable: Any, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def kernel_lines(rows: Sequence[Row]) -> list[str]:
    """Which attention kernel each framework, variant and mode ran (one line each), with the
    notes that change what a row means (Inductor's rewrite of math, say)."""
    seen: dict[tuple[str, str, str], str] = {}
    for r in rows:
        seen.setdefault((r.framework, _variant(r), r.mode), r.kernel or "-")
    return [
        f"{fw:5} {variant:10} {mode:8} {kernel}" for (fw, variant, mode), kernel in seen.items()
    ]


def format_verdict(rows: Sequence[Row]) -> list[str]:
    """Per phase and shape: each framework's fastest variant and mode, and the ratio of the
    two frameworks' fastest times (one device only; meshes are in the table)."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.devices == 1:
            groups.setdefault((r.phase, r.dtype, r.batch, r.seq_len), []).append(r)
    lines = []
    for (phase, dtype, batch, seq_len), here in groups.items():
        best: dict[str, Row] = {}
        for r in here:
            if r.framework not in best or r.median_ms < best[r.framework].median_ms:
                best[r.framework] = r
        order = ("torch", "jax")
        ranked = sorted(best.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9)
        parts = [f"{fw} {_variant(r)} {r.mode} {r.median_ms:,.1f} ms" for fw, r in ranked]
        text = f"{phase} {dtype} B={batch} T={seq_len}: " + ", ".join(parts)
        if {"torch", "jax"} <= best.keys():
            ratio = best["jax"].median_ms / best["torch"].median_ms
            faster = "torch" if ratio >= 1 else "jax"
            text += f"; {faster} {max(ratio, 1 / ratio):.2f}x faster"
        lines.append(text)
    return lines


LEGEND = """\
phase: fwd forward, fwd+bwd forward and backward, train a train step (AdamW). ms: median wall
time of one call; ±IQR: interquartile range of the timed calls. util%: analytic FLOPs
(shared/flops.py) / time, as a share of the matmul peak measured in this run (same framework,
device, dtype). MiB: peak working memory of one call on one device (memory_method in
results.json says how). compile s: cold[/warm] compile time. parity: max |torch - jax| of the
pair's forward outputs (a peer, hf or keras: max |peer - ours-fused|, same framework); "!"
marks one outside shared/tolerances.py. Every other field (kernel, datasheet utilisation,
notes, ...) is in results.csv and results.json."""


def results_document(
    *,
    environment: dict[str, Any],
    settings: dict[str, Any],
    peaks: list[dict[str, Any]],
    rows: Sequence[Row],
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
        "rows": [dataclasses.asdict(r) for r in rows],
        "skipped": skipped,
        "failures": failures,
        "interrupted": interrupted,
    }
    validate_results(doc)
    return doc


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if v is None else v) for k, v in dataclasses.asdict(row).items()}
            )


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``results.json`` (committed ones included) as :class:`Row`."""
    return [Row.from_dict(r) for r in json.loads(Path(path).read_text())["rows"]]
