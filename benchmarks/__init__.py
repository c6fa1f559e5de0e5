"""Benchmarks of the twin encoder: ``python -m benchmarks`` (see ``--help``).

Modules: ``cli`` (the command), ``suites`` (presets, suites, cases), ``harness`` (timing,
statistics, memory sampling), ``run_torch`` / ``run_jax`` (each framework's side),
``runner`` (parity checks and rows), ``environment`` (versions, devices, settings),
``peaks`` (datasheet and measured peaks), ``schema``, ``report`` (table, JSON, CSV) and
``plots`` (PNGs). Importing this package imports neither torch nor JAX.
"""

from benchmarks.cli import main

__all__ = ["main"]
