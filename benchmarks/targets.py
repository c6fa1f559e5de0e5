"""The project's CPU targets, read from a committed results.json.

    python -m benchmarks.targets benchmarks/results/cpu-standard/results.json

Prints, for B=8, T=128, float32 (the shape the targets name):
* our PyTorch encoder (fused backend, eager) against ``nn.TransformerEncoder`` with its
  inference fast path: throughput ratio, target >= 0.95;
* our JAX encoder under jit (each backend) against the encoder built from Flax's
  ``nnx.MultiHeadAttention`` under jit: target >= 1.0;
* the train step (forward, backward, AdamW; compiled) as a fraction of the matmul peak
  measured in the same run, per framework and backend: target >= 0.65.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _row(rows: list[dict], **match) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[0] if found else None


def targets(
    rows: list[dict], *, batch: int = 8, seq_len: int = 128
) -> list[tuple[str, float | None, float]]:
    """``(what, measured, target)`` rows; ``measured`` is None when the results lack a row."""
    shape = {"batch": batch, "seq_len": seq_len, "dtype": "float32", "phase": "forward"}

    def ratio(ours: dict | None, native: dict | None) -> float | None:
        return None if ours is None or native is None else native["median_ms"] / ours["median_ms"]

    out = []
    torch_native = _row(rows, framework="torch", implementation="native", mode="eager", **shape)
    torch_fused = _row(
        rows, framework="torch", implementation="ours", backend="fused", mode="eager", **shape
    )
    out.append(
        (
            "torch ours-fused eager / nn.TransformerEncoder fast path (throughput)",
            ratio(torch_fused, torch_native),
            0.95,
        )
    )
    jax_native = _row(rows, framework="jax", implementation="native", mode="compiled", **shape)
    for backend in ("math", "fused"):
        ours = _row(
            rows, framework="jax", implementation="ours", backend=backend, mode="compiled", **shape
        )
        out.append(
            (
                f"jax ours-{backend} jit / nnx.MultiHeadAttention encoder jit (throughput)",
                ratio(ours, jax_native),
                1.0,
            )
        )
    step = {**shape, "phase": "train_step", "mode": "compiled"}
    for framework in ("torch", "jax"):
        for backend in ("math", "fused"):
            r = _row(rows, framework=framework, implementation="ours", backend=backend, **step)
            out.append(
                (
                    f"{framework} ours-{backend} compiled train step / measured matmul peak",
                    None if r is None else r["utilization"],
                    0.65,
                )
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check the CPU targets in a results.json.")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text())["rows"]
    for what, measured, target in targets(rows):
        verdict = "missing" if measured is None else ("met" if measured >= target else "MISSED")
        shown = "-" if measured is None else f"{measured:.3f}"
        print(f"{what:75s} {shown:>7s}  target {target:.2f}  {verdict}")


if __name__ == "__main__":
    main()
