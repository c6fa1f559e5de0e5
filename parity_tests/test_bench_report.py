"""What a run writes and prints: rows as dataclasses, ``results.json`` / ``results.csv``, the
120-column table, the verdict per phase, the kernel lines and the plots; committed results
read back. No timing is asserted: the rows here are made up."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import plots, report, schema
from benchmarks.schema import ROW_FIELDS, Row

REPO = Path(__file__).resolve().parent.parent


def _row(**changes) -> Row:
    row = Row(
        framework="torch",
        implementation="ours",
        backend="fused",
        kernel="sdpa-flash-cpu",
        mode="eager",
        phase="forward",
        device="cpu",
        device_name="some cpu",
        dtype="float32",
        precision="float32",
        batch=2,
        seq_len=16,
        config="tiny",
        median_ms=1.5,
        spread_ms=0.1,
        min_ms=1.4,
        repeats=5,
        tokens_per_s=21333.3,
        flops=1000,
        tflops=1e-6,
        peak_tflops_measured=0.1,
        utilization=1e-5,
        utilization_best_gemm=5e-6,
        peak_tflops_datasheet=None,
        utilization_datasheet=None,
        peak_memory_bytes=2**20,
        memory_method="rss_sampled",
        compile_s_cold=None,
        compile_s_warm=None,
        parity_max_abs_diff=1e-6,
        parity_ok=True,
        threads=2,
    )
    return dataclasses.replace(row, **changes)


def test_a_row_reads_back_from_its_dict_and_names_missing_or_unknown_fields():
    row = _row(notes="a note", mesh="data=2", devices=2, collective_bytes=10)
    assert Row.from_dict(dataclasses.asdict(row)) == row
    assert row["median_ms"] == 1.5  # rows read like the dicts of results.json
    with pytest.raises(KeyError):
        row["no_such_field"]
    data = dataclasses.asdict(row)
    del data["batch"]
    with pytest.raises(ValueError, match=r"missing \['batch'\], unexpected \[\]"):
        Row.from_dict(data)
    with pytest.raises(ValueError, match=r"unexpected \['speed'\]"):
        Row.from_dict({**dataclasses.asdict(row), "speed": 1})


def test_every_row_field_is_documented():
    for field in dataclasses.fields(Row):
        assert field.metadata.get("doc"), field.name


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "benchmarks" / "results").glob("**/results.json"))
    + sorted((REPO / "studies" / "results").glob("**/results.json")),
    ids=lambda p: str(p.parent.relative_to(REPO)),
)
def test_committed_results_read_back_as_rows(path):
    """Results written before the mesh fields existed take their values for them (one
    device, no mesh); rows of a mesh keep theirs, and a mesh row is on more than one."""
    doc = json.loads(path.read_text())
    schema.validate_results(doc)
    rows = report.read_rows(path)
    assert len(rows) == len(doc["rows"]) > 0
    for raw, row in zip(doc["rows"], rows, strict=True):
        want = (raw["devices"], raw["mesh"]) if "mesh" in raw else (1, "")
        assert (row.devices, row.mesh) == want
        assert (row.mesh == "") == (row.devices == 1), (row.mesh, row.devices)


def test_json_and_csv_hold_every_field_of_every_row(tmp_path):
    rows = [_row(), _row(framework="jax", kernel=None, mesh="data=2", devices=2)]
    doc = report.results_document(
        environment={f: None for f in schema.ENVIRONMENT_FIELDS},
        settings={},
        peaks=[],
        rows=rows,
        skipped=[],
        failures=[],
    )
    report.write_json(doc, tmp_path / "results.json")
    report.write_csv(rows, tmp_path / "results.csv")
    assert report.read_rows(tmp_path / "results.json") == rows
    with (tmp_path / "results.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == list(ROW_FIELDS)
    assert [line["mesh"] for line in lines] == ["", "data=2"]
    assert lines[1]["kernel"] == ""  # None is an empty cell


def test_table_keeps_to_120_columns_and_marks_parity_outside_tolerance():
    rows = [
        _row(
            phase="forward_backward",
            implementation="native",
            backend="native",
            mode="compiled",
            batch=128,
            seq_len=8192,
            median_ms=123456.7,
            spread_ms=1234.5,
            tokens_per_s=12345678.0,
            peak_memory_bytes=123456 * 2**20,
            compile_s_cold=123.4,
            compile_s_warm=12.3,
        ),
        _row(framework="jax", parity_ok=False, mesh="data=2,model=2,fsdp", devices=4),
    ]
    text = report.format_table(rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= report.WIDTH
    assert "123.4/12.3" in text and "123,456.7" in text and "12.35M" in text  # nothing cut
    assert "1e-06!" in lines[-1] and "data=2,model=2,fsdp" in lines[-1]
    assert "mesh" in lines[0] and "ms" in lines[0]


def test_the_table_shows_remat_when_a_row_has_a_policy():
    plain = report.format_table([_row(), _row(framework="jax")])
    assert "remat" not in plain.splitlines()[0]
    rows = [_row(median_ms=10.0), _row(median_ms=13.0, remat="block")]
    lines = report.format_table(rows).splitlines()
    assert "remat" in lines[0]
    body = [line for line in lines if "10.0" in line or "13.0" in line]
    assert [("block" in line, "none" in line) for line in body] == [(False, True), (True, False)]
    assert max(len(line) for line in lines) <= report.WIDTH


def test_verdict_names_each_frameworks_fastest_variant_and_their_ratio():
    rows = [
        _row(backend="math", median_ms=10.0),
        _row(backend="fused", median_ms=8.0),
        _row(framework="jax", backend="math", mode="compiled", median_ms=12.0),
        _row(framework="jax", backend="fused", median_ms=20.0),
        _row(phase="train_step", median_ms=50.0),  # torch only: no ratio
        _row(framework="jax", phase="train_step", mesh="data=2", devices=2, median_ms=1.0),
    ]
    forward, train = report.format_verdict(rows)
    assert forward == (
        "forward float32 B=2 T=16: torch ours-fused eager 8.0 ms, "
        "jax ours-math compiled 12.0 ms; torch 1.50x faster"
    )
    assert train == "train_step float32 B=2 T=16: torch ours-fused eager 50.0 ms"


def test_kernel_lines_name_each_framework_variant_and_mode_once():
    rows = [
        _row(backend="math", mode="compiled", kernel="sdpa-flash-cpu (Inductor)"),
        _row(backend="math", mode="compiled", kernel="sdpa-flash-cpu (Inductor)", seq_len=32),
        _row(framework="jax", backend="flash", kernel="flash-ours (lax loops)"),
    ]
    lines = report.kernel_lines(rows)
    assert len(lines) == 2
    assert lines[0].split() == ["torch", "ours-math", "compiled", "sdpa-flash-cpu", "(Inductor)"]


def test_plots_are_written_for_a_sequence_sweep_and_for_meshes(tmp_path):
    rows = [
        _row(framework=fw, backend=b, mode=mode, seq_len=t, batch=8 // (t // 16), median_ms=t / 10)
        for fw in ("torch", "jax")
        for b in ("math", "fused", "flash")
        for mode in ("eager", "compiled")
        for t in (16, 32, 64)
    ]
    rows += [
        _row(framework=fw, phase="train_step", batch=8, seq_len=16, mesh=m, devices=n)
        for fw in ("torch", "jax")
        for m, n in (("", 1), ("data=2", 2))
    ]
    written = plots.plot_all(rows, tmp_path)
    names = {p.name for p in written}
    assert {"latency_vs_seq_len.png", "throughput.png", "memory_vs_seq_len.png"} <= names
    assert "mesh.png" in names
    assert all(p.stat().st_size > 1000 for p in written)


def test_plots_give_each_backend_its_own_colour_and_each_framework_its_own_marker():
    assert len(set(plots._COLOURS.values())) == len(plots._COLOURS)
    assert plots._MARKERS["torch"] != plots._MARKERS["jax"]


def test_progress_weighs_rows_by_their_flops_and_calls_and_logs_above_the_bar():
    import io

    from rich.console import Console

    from benchmarks.mesh import parse_mesh
    from benchmarks.progress import RunProgress, case_weight
    from benchmarks.suites import PRESETS, Case

    cfg = PRESETS["tiny"]
    case = Case("torch", "ours-fused", "eager", "forward", "cpu", "float32", 2, 16)
    longer = dataclasses.replace(case, seq_len=32)
    compiled = dataclasses.replace(case, mode="compiled")
    sharded = dataclasses.replace(case, mesh=parse_mesh("data=2"))
    weight = case_weight(case, cfg, calls=5)
    assert case_weight(longer, cfg, calls=5) > 2 * weight  # twice the tokens, more attention
    assert case_weight(compiled, cfg, calls=5) > weight
    assert case_weight(sharded, cfg, calls=5) == 2 * weight
    out = io.StringIO()
    with RunProgress(cfg, calls=5, console=Console(file=out, width=100)) as progress:
        progress.start([case, longer])
        progress.log("a line [not markup]")
        progress.advance(case)
    assert out.getvalue().splitlines() == ["a line [not markup]"]  # no bar off a terminal
