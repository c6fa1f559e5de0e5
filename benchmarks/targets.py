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
* PyTorch's lowest peak memory (any of our backends, no remat) / JAX flash's: target >=
  1 / 1.5, i.e. JAX flash uses at most 1.5x PyTorch's best; once per ``remat`` policy of the
  JAX flash rows, with the like-for-like ratio stated where PyTorch has that policy too;
* PyTorch's fastest time (any of our backends) / JAX flash's: stated, no target.
Rows a results file lacks are reported "missing".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.backends import BACKENDS, REMATS


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
    """``(what, measured, target or None when only stated)`` for the long-sequence train step.

    Speed and PyTorch's best compare rows without activation checkpointing (a row without a
    ``remat`` field is one). JAX flash's memory is checked once per ``remat`` policy the
    results hold, each against PyTorch's best without remat (the target's baseline); where
    PyTorch has rows with the same policy, that like-for-like ratio is stated beside it.
    """
    step = {"batch": batch, "seq_len": seq_len, "dtype": "float32", "phase": "train_step"}
    step |= {"mode": "compiled", "implementation": "ours"}

    def rows_of(framework: str, backend: str, remat: str) -> list[dict]:
        return [
            r
            for r in rows
            if all(r.get(k) == v for k, v in step.items())
            and r.get("framework") == framework
            and r.get("backend") == backend
            and r.get("remat", "none") == remat
        ]

    def torch_rows(remat: str) -> list[dict]:
        return [r for b in BACKENDS for r in rows_of("torch", b, remat)[:1]]

    def best_memory(found: list[dict]) -> int | None:
        memories = [r["peak_memory_bytes"] for r in found if r.get("peak_memory_bytes")]
        return min(memories) if memories else None

    def ratio(numerator: int | None, row: dict | None) -> float | None:
        memory = None if row is None else row.get("peak_memory_bytes")
        return numerator / memory if numerator and memory else None

    where = f"B={batch}, T={seq_len}"
    flash = (rows_of("jax", "flash", "none") or [None])[0]
    torch_best = best_memory(torch_rows("none"))
    out = [
        (
            f"jax ours-flash compiled train step {where} / measured matmul peak",
            None if flash is None else flash["utilization"],
            0.60,
        ),
        (
            f"torch best peak memory / jax ours-flash peak memory, train step {where}",
            ratio(torch_best, flash),
            1 / 1.5,
        ),
    ]
    for remat in REMATS[1:]:
        remat_flash = (rows_of("jax", "flash", remat) or [None])[0]
        if remat_flash is None:
            continue
        out.append(
            (
                f"torch best peak memory / jax ours-flash (remat {remat}) peak memory, "
                f"train step {where}",
                ratio(torch_best, remat_flash),
                1 / 1.5,
            )
        )
        same = best_memory(torch_rows(remat))
        if same:
            out.append(
                (
                    f"torch best (remat {remat}) / jax ours-flash (remat {remat}) peak memory, "
                    f"train step {where}",
                    ratio(same, remat_flash),
                    None,
                )
            )
    fastest = torch_rows("none")
    out.append(
        (
            f"torch best time / jax ours-flash time, train step {where}",
            min(r["median_ms"] for r in fastest) / flash["median_ms"]
            if fastest and flash
            else None,
            None,
        )
    )
    return out


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
