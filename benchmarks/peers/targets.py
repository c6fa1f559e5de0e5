"""The peer targets, read from a results.json of the peers suite.

    python -m benchmarks.peers.targets benchmarks/results/cpu-peers/results.json

For each shape (B=8, T=128 and B=2, T=512), float32, compiled, forward and train step, the
ratio ``peer time / ours time`` (>= 1: ours at least as fast):

* PyTorch: ours (fused) against ``transformers.BertModel`` with SDPA (``hf``): target 1.0;
* JAX: ours (fused) against keras-hub's ``BertBackbone`` on JAX (``keras``): target 1.0;
* PyTorch: ours (fused) against keras-hub on the torch backend: stated, no target.

And each peer row's parity (max |peer - ours|, and whether it is within the tolerance).
Rows a results file lacks are reported "missing".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.targets import _row, verdict

__all__ = ["SHAPES", "main", "parity_lines", "peer_targets"]

SHAPES = ((8, 128), (2, 512))
# (framework, peer variant's implementation, backend, target or None when only stated)
_PAIRS = (
    ("torch", "hf", "sdpa", 1.0),
    ("jax", "keras", "keras", 1.0),
    ("torch", "keras", "keras", None),
)


def peer_targets(rows: list[dict]) -> list[tuple[str, float | None, float | None]]:
    """``(what, peer time / ours time, target or None)`` for every shape, phase and pair."""
    out = []
    for batch, seq_len in SHAPES:
        for phase in ("forward", "train_step"):
            common = {"batch": batch, "seq_len": seq_len, "dtype": "float32", "phase": phase}
            common["mode"] = "compiled"
            for framework, implementation, backend, target in _PAIRS:
                ours = _row(
                    rows, framework=framework, implementation="ours", backend="fused", **common
                )
                peer = _row(
                    rows,
                    framework=framework,
                    implementation=implementation,
                    backend=backend,
                    **common,
                )
                ratio = (
                    None if ours is None or peer is None else peer["median_ms"] / ours["median_ms"]
                )
                name = "hf" if implementation == "hf" else "keras"
                what = (
                    f"{framework} {name} / ours-fused time, compiled {phase} B={batch} T={seq_len}"
                )
                out.append((what, ratio, target))
    return out


def parity_lines(rows: list[dict]) -> list[str]:
    """One line per peer row: its max |peer - ours| and whether it is within tolerance."""
    lines = []
    for r in rows:
        if r["implementation"] not in ("hf", "keras"):
            continue
        diff = r.get("parity_max_abs_diff")
        state = {True: "within tolerance", False: "OUTSIDE tolerance"}.get(r.get("parity_ok"), "-")
        shown = "-" if diff is None else f"{diff:.1e}"
        name = "keras" if r["implementation"] == "keras" else f"hf-{r['backend']}"
        lines.append(
            f"{r['framework']:5} {name:8} {r['mode']:8} "
            f"{r['phase']:10} B={r['batch']} T={r['seq_len']}: max |peer - ours| {shown} ({state})"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check the peer targets in a results.json.")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    doc = json.loads(args.results.read_text())
    for what, measured, target in peer_targets(doc["rows"]):
        shown = "-" if measured is None else f"{measured:.3f}"
        wanted = "      -" if target is None else f"{target:.2f}"
        print(f"{what:72s} {shown:>7s}  target {wanted}  {verdict(measured, target)}")
    print()
    for line in parity_lines(doc["rows"]):
        print(line)
    versions = doc["environment"]["versions"]
    print(
        "\nversions: "
        + ", ".join(
            f"{k} {versions.get(k)}" for k in ("torch", "jax", "transformers", "keras", "keras_hub")
        )
    )


if __name__ == "__main__":
    main()
