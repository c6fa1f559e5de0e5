"""The project's CPU targets, read from a committed results.json.

    python -m benchmarks.targets benchmarks/results/cpu-standard/results.json

Prints, for B=8, T=128, float32 (the shape the targets name):
* our PyTorch encoder (fused backend, eager) against ``nn.TransformerEncoder`` with its
  inference fast path: throughput ratio, target >= 0.95;
* our JAX encoder under jit (each backend) against the encoder built from Flax's
  ``nnx.MultiHeadAttention`` under jit: target >= 1.0;
* the train step (forward, backward, AdamW; compiled) as a fraction of the matmul peak
  measured in the same run, per framework and backend: target >= 0.65.

And, for long sequences (B=1, T=2048, float32, compiled train step):
* JAX with flash attention as a fraction of JAX's measured matmul peak: target >= 0.60;
* PyTorch's lowest peak memory (any of our backends) / JAX flash's: target >= 1 / 1.5,
  i.e. JAX flash uses at most 1.5x PyTorch's best;
* PyTorch's fastest time (any of our backends) / JAX flash's: stated, no target.
Rows a results file lacks are reported "missing".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.backends import BACKENDS


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
        for backend in BACKENDS:
            r = _row(rows, framework=framework, implementation="ours", backend=backend, **step)
            out.append(
                (
                    f"{framework} ours-{backend} compiled train step / measured matmul peak",
                    None if r is None else r["utilization"],
                    0.65,
                )
            )
    return out


def long_sequence_targets(
    rows: list[dict], *, batch: int = 1, seq_len: int = 2048
) -> list[tuple[str, float | None, float | None]]:
    """``(what, measured, target or None when only stated)`` for the long-sequence train step."""
    step = {"batch": batch, "seq_len": seq_len, "dtype": "float32", "phase": "train_step"}
    step |= {"mode": "compiled", "implementation": "ours"}
    flash = _row(rows, framework="jax", backend="flash", **step)
    torch_rows = [r for b in BACKENDS if (r := _row(rows, framework="torch", backend=b, **step))]
    where = f"B={batch}, T={seq_len}"
    memories = [r["peak_memory_bytes"] for r in torch_rows if r.get("peak_memory_bytes")]
    flash_memory = None if flash is None else flash.get("peak_memory_bytes")
    return [
        (
            f"jax ours-flash compiled train step {where} / measured matmul peak",
            None if flash is None else flash["utilization"],
            0.60,
        ),
        (
            f"torch best peak memory / jax ours-flash peak memory, train step {where}",
            min(memories) / flash_memory if memories and flash_memory else None,
            1 / 1.5,
        ),
        (
            f"torch best time / jax ours-flash time, train step {where}",
            min(r["median_ms"] for r in torch_rows) / flash["median_ms"]
            if torch_rows and flash
            else None,
            None,
        ),
    ]


def verdict(measured: float | None, target: float | None) -> str:
    if measured is None:
        return "missing"
    if target is None:
        return "stated"
    return "met" if measured >= target else "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check the CPU targets in a results.json.")
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text())["rows"]
    for what, measured, target in [*targets(rows), *long_sequence_targets(rows)]:
        shown = "-" if measured is None else f"{measured:.3f}"
        wanted = "      -" if target is None else f"{target:.2f}"
        print(f"{what:80s} {shown:>7s}  target {wanted}  {verdict(measured, target)}")


if __name__ == "__main__":
    main()
