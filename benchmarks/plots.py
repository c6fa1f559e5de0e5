"""PNG plots of a run (matplotlib, Agg backend: no display needed).

* ``latency_vs_seq_len.png``: time per sequence (median call time / batch) against sequence
  length, log-log: slope 1 where the linear layers dominate, towards 2 where attention's
  T^2 terms do;
* ``throughput.png``: tokens per second of every variant and mode, at the shortest sequence;
* ``memory_vs_seq_len.png``: peak working memory per sequence against sequence length;
* ``utilization.png``: achieved FLOP/s as a share of the measured matmul peak (and of the
  datasheet peak where one is known) against sequence length;
* ``throughput_vs_batch.png``: tokens per second against batch size, when a run has batch
  sweeps.

* ``mesh.png``: tokens per second per device on each mesh, when a run has mesh rows.

:func:`memory_vs_seq_len` draws the memory study's points (``studies/memory_vs_seq_len.py``):
one line per framework, backend and ``remat`` policy.

Lines: one colour per attention backend (or peer), one marker per framework, solid =
compiled, dashed = eager; one panel per phase (and dtype). The legend sits below the panels,
where it hides no line: colours, markers and line styles listed apart.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema import Row
from benchmarks.variants import REGISTRY

__all__ = ["memory_vs_seq_len", "plot_all"]

# one colour per backend or peer (colour-blind-safe Okabe-Ito hues), in registry order
_HUES = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
_BACKENDS = tuple(dict.fromkeys(v.backend for v in REGISTRY.values()))
_COLOURS = {b: _HUES[i % len(_HUES)] for i, b in enumerate(_BACKENDS)}
_STYLES = {"compiled": "-", "eager": "--"}
_MARKERS = {"torch": "o", "jax": "s"}
# memory_vs_seq_len: line style per framework, marker per remat policy
_FRAMEWORK_STYLES = {"torch": "-", "jax": "--"}
_REMAT_MARKERS = {"none": "o", "block": "^", "attention": "D"}
# bars of a framework: greys (colour means a backend elsewhere), jax hatched
_FRAMEWORK_BARS = {
    "torch": {"color": "#4d4d4d"},
    "jax": {"color": "#bdbdbd", "hatch": "//", "edgecolor": "#4d4d4d"},
}


def _series_key(row: Row) -> tuple[str, str, str]:
    return (row.framework, row.backend, row.mode)


def _legend(fig: Any, plt: Any, rows: Sequence[Row]) -> None:
    """Colours (backends), markers (frameworks) and line styles (modes) present, in one row
    of legend entries below the panels."""
    from matplotlib.lines import Line2D

    backends = [b for b in _BACKENDS if any(r.backend == b for r in rows)]
    frameworks = [f for f in _MARKERS if any(r.framework == f for r in rows)]
    modes = [m for m in _STYLES if any(r.mode == m for r in rows)]
    handles = [Line2D([], [], color=_COLOURS[b], linewidth=3) for b in backends]
    labels = list(backends)
    handles += [Line2D([], [], color="grey", marker=_MARKERS[f], linestyle="") for f in frameworks]
    labels += frameworks
    handles += [Line2D([], [], color="grey", linestyle=_STYLES[m]) for m in modes]
    labels += modes
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)


def _sweep_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows of the sequence-length sweep: at each length, the most common batch size
    (batch sweeps add other batch sizes at one length; they have their own plot)."""
    rows = [r for r in rows if r.devices == 1]
    by_len: dict[int, Counter] = defaultdict(Counter)
    for r in rows:
        by_len[r.seq_len][r.batch] += 1
    batch_at = {t: max(c, key=lambda b: (c[b], b)) for t, c in by_len.items()}
    return [r for r in rows if r.batch == batch_at[r.seq_len]]


def _panels(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(phase, dtype) pairs present, in a stable order."""
    order = {"forward": 0, "forward_backward": 1, "train_step": 2}
    keys = {(r.phase, r.dtype) for r in rows}
    return sorted(keys, key=lambda k: (order.get(k[0], 9), k[1]))


def _title(rows: Sequence[Row], what: str) -> str:
    r = rows[0]
    device = r.device_name or r.device
    return f"{what}: {r.config} on {r.device} ({device}), matmuls in {r.precision}"


def _line_figure(
    plt: Any,
    rows: Sequence[Row],
    *,
    y: Callable[[Row], float | None],
    ylabel: str,
    title: str,
    path: Path,
    x: str = "seq_len",
    xlabel: str = "sequence length T (tokens)",
    logy: bool = True,
    hline: float | None = None,
) -> bool:
    rows = [r for r in rows if y(r) is not None]
    if not rows:
        return False
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.4), squeeze=False)
    for ax, (phase, dtype) in zip(axes[0], panels, strict=True):
        series: dict[tuple, list[Row]] = defaultdict(list)
        for r in rows:
            if (r.phase, r.dtype) == (phase, dtype):
                series[_series_key(r)].append(r)
        for key, points in sorted(series.items()):
            points.sort(key=lambda r: r[x])
            framework, backend, mode = key
            ax.plot(
                [r[x] for r in points],
                [y(r) for r in points],
                _STYLES.get(mode, ":"),
                marker=_MARKERS.get(framework, "x"),
                color=_COLOURS.get(backend, "grey"),
                alpha=0.85,
            )
        xs = sorted({r[x] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([_tick(rows, x, v) for v in xs])
        ax.minorticks_off()
        if logy:
            ax.set_yscale("log")
        if hline is not None:
            ax.axhline(hline, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{phase}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, plt, rows)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _tick(rows: Sequence[Row], x: str, value: int) -> str:
    """A sequence length's tick names its batch size too, where that is one number."""
    if x != "seq_len":
        return str(value)
    batches = {r.batch for r in rows if r.seq_len == value}
    return f"{value}\nB={batches.pop()}" if len(batches) == 1 else str(value)


def _throughput_bars(plt: Any, rows: Sequence[Row], path: Path) -> bool:
    """Grouped bars at the shortest sequence length of the sweep: one group per variant and
    mode, one bar per framework."""
    rows = _sweep_rows(rows)
    if not rows:
        return False
    t = min(r.seq_len for r in rows)
    rows = [r for r in rows if r.seq_len == t]
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.2), squeeze=False)
    for ax, (phase, dtype) in zip(axes[0], panels, strict=True):
        here = [r for r in rows if (r.phase, r.dtype) == (phase, dtype)]
        groups = sorted({(r.implementation, r.backend, r.mode) for r in here})
        frameworks = sorted({r.framework for r in here}, key=["torch", "jax"].index)
        width = 0.8 / max(1, len(frameworks))
        for j, fw in enumerate(frameworks):
            values = []
            for g in groups:
                match = [
                    r
                    for r in here
                    if (r.implementation, r.backend, r.mode) == g and r.framework == fw
                ]
                values.append(match[0].tokens_per_s if match else 0.0)
            xs = [i + (j - (len(frameworks) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, values, width, label=fw, **_FRAMEWORK_BARS.get(fw, {}))
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            [_group_label(i, b) + f"\n{m}" for i, b, m in groups],
            fontsize="small",
        )
        batch = here[0].batch
        ax.set_ylabel("tokens per second (higher is better)")
        ax.set_title(f"{phase}, {dtype}, B={batch}, T={t}")
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(_title(rows, "Throughput"))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(rows: Sequence[Row], out: Path) -> list[Path]:
    """Write every plot that the rows have data for; returns the files written.

    Needs matplotlib; without it, no plots (the caller says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if not rows:
        return written
    sweep = _sweep_rows(rows)

    def per_sequence(field: str, scale: float) -> Callable[[Row], float | None]:
        def f(r: Row) -> float | None:
            return None if r[field] is None else r[field] / r.batch * scale

        return f

    plan = [
        (
            "latency_vs_seq_len.png",
            dict(
                y=per_sequence("median_ms", 1.0),
                ylabel="median time per sequence (ms) = call time / B",
                title=_title(sweep, "Latency"),
            ),
        ),
        (
            "memory_vs_seq_len.png",
            dict(
                y=per_sequence("peak_memory_bytes", 1 / 2**20),
                ylabel="peak working memory per sequence (MiB)",
                title=_title(sweep, "Peak memory of one call"),
            ),
        ),
        (
            "utilization.png",
            dict(
                y=lambda r: None if r.utilization is None else 100 * r.utilization,
                ylabel="% of the matmul peak measured in this run",
                title=_title(sweep, "Utilisation"),
                logy=False,
                hline=100.0,
            ),
        ),
        (
            "utilization_datasheet.png",
            dict(
                y=lambda r: (
                    None if r.utilization_datasheet is None else 100 * r.utilization_datasheet
                ),
                ylabel="% of the datasheet peak",
                title=_title(sweep, "Utilisation (datasheet)"),
                logy=False,
            ),
        ),
    ]
    for name, kwargs in plan:
        if _line_figure(plt, sweep, path=out / name, **kwargs):
            written.append(out / name)
    if _throughput_bars(plt, rows, out / "throughput.png"):
        written.append(out / "throughput.png")
    if _mesh_bars(plt, rows, out / "mesh.png"):
        written.append(out / "mesh.png")
    batch_rows = _batch_sweep_rows(rows)
    if batch_rows and _line_figure(
        plt,
        batch_rows,
        y=lambda r: r.tokens_per_s,
        ylabel="tokens per second",
        title=_title(batch_rows, "Throughput against batch size"),
        path=out / "throughput_vs_batch.png",
        x="batch",
        xlabel="batch size B (sequences)",
    ):
        written.append(out / "throughput_vs_batch.png")
    return written


def memory_vs_seq_len(points: Sequence[dict], path: Path, *, title: str = "") -> bool:
    """One line per (framework, backend, remat) of ``points`` (dicts with ``framework``,
    ``backend``, ``remat``, ``seq_len`` and ``bytes``, None where not measured): MiB
    against T, log-log; colour per backend, line style per framework (PyTorch solid, JAX
    dashed), marker per remat policy. Points without bytes are left out (a line stops
    there). Writes ``path``; False when no point has bytes. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    series: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for p in points:
        if p["bytes"] is not None:
            key = (p["framework"], p["backend"], p["remat"])
            series[key].append((p["seq_len"], p["bytes"] / 2**20))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8.4, 6.2))
    for (framework, backend, remat), xy in sorted(series.items()):
        xy.sort()
        ax.plot(
            [x for x, _ in xy],
            [y for _, y in xy],
            _FRAMEWORK_STYLES.get(framework, ":"),
            marker=_REMAT_MARKERS.get(remat, "x"),
            color=_COLOURS.get(backend, "grey"),
            alpha=0.85,
        )
    xs = sorted({p["seq_len"] for p in points})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("sequence length T (tokens), B=1")
    ax.set_ylabel("peak working memory of one train step (MiB)")
    ax.grid(True, which="both", alpha=0.3)
    keys = series.keys()
    backends = [b for b in _BACKENDS if any(k[1] == b for k in keys)]
    frameworks = [f for f in _FRAMEWORK_STYLES if any(k[0] == f for k in keys)]
    remats = [r for r in _REMAT_MARKERS if any(k[2] == r for k in keys)]
    handles = [Line2D([], [], color=_COLOURS[b], linewidth=3) for b in backends]
    labels = list(backends)
    handles += [Line2D([], [], color="grey", linestyle=_FRAMEWORK_STYLES[f]) for f in frameworks]
    labels += [{"torch": "PyTorch (measured)", "jax": "JAX (XLA's plan)"}[f] for f in frameworks]
    handles += [
        Line2D([], [], color="grey", marker=_REMAT_MARKERS[r], linestyle="") for r in remats
    ]
    labels += [f"remat {r}" for r in remats]
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title or "Memory of one train step against sequence length", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _batch_sweep_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows at the sequence length that has more than two batch sizes, if any."""
    rows = [r for r in rows if r.devices == 1]
    batches: dict[int, set[int]] = defaultdict(set)
    for r in rows:
        batches[r.seq_len].add(r.batch)
    lengths = [t for t, bs in batches.items() if len(bs) > 2]
    return [r for r in rows if r.seq_len in lengths[:1]]


def _mesh_bars(plt: Any, rows: Sequence[Row], path: Path) -> bool:
    """Tokens per second per device of the train step on each mesh, beside one device, per
    framework and mode (one panel per shape)."""
    meshed = {(r.batch, r.seq_len, r.dtype) for r in rows if r.devices > 1}
    rows = [r for r in rows if r.phase == "train_step" and (r.batch, r.seq_len, r.dtype) in meshed]
    if not rows:
        return False
    shapes = sorted(meshed)
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.0 * len(shapes), 5.0), squeeze=False)
    for ax, (batch, seq_len, dtype) in zip(axes[0], shapes, strict=True):
        here = [r for r in rows if (r.batch, r.seq_len, r.dtype) == (batch, seq_len, dtype)]
        meshes = sorted({r.mesh for r in here}, key=lambda m: (m != "", m))
        series = sorted({(r.framework, r.backend, r.mode) for r in here})
        width = 0.8 / max(1, len(series))
        for j, (fw, backend, mode) in enumerate(series):
            values = []
            for m in meshes:
                match = [
                    r
                    for r in here
                    if (r.framework, r.backend, r.mode, r.mesh) == (fw, backend, mode, m)
                ]
                values.append(match[0].tokens_per_s / match[0].devices if match else 0.0)
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(meshes))]
            ax.bar(
                xs,
                values,
                width,
                color=_COLOURS.get(backend, "grey"),
                hatch="" if fw == "torch" else "//",
                linestyle=_STYLES.get(mode, ":"),
                edgecolor="black",
                label=f"{fw} {backend} {mode}",
            )
        ax.set_xticks(range(len(meshes)))
        ax.set_xticklabels([m or "one device" for m in meshes])
        ax.set_ylabel("tokens per second per device")
        ax.set_title(f"train step, {dtype}, B={batch}, T={seq_len}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    note = " (CPU: host devices share the cores)" if rows[0].device == "cpu" else ""
    fig.suptitle(_title(rows, "Train step on device meshes") + note)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.plots RESULTS.json [OUT]``: draw a results file's plots again
    (into the file's folder by default)."""
    from benchmarks.report import read_rows

    parser = argparse.ArgumentParser(description="Draw the plots of a results.json.")
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args(argv)
    for path in plot_all(read_rows(args.results), args.out or args.results.parent):
        print(path)


if __name__ == "__main__":
    main()


def _group_label(implementation: str, backend: str) -> str:
    """``ours fused``, ``native``, ``hf sdpa``, ``keras``."""
    if implementation == backend:
        return implementation
    return f"{implementation} {backend}"
