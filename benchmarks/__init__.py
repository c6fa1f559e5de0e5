"""Benchmarks of the twin encoder: ``python -m benchmarks`` (see ``--help``).

Modules: ``cli`` (the command), ``suites`` (presets, suites, cases), ``variants`` (the
registry of what a row can time), ``mesh`` (device meshes, and running a case on one in
child processes), ``harness`` (timing, statistics, memory sampling), ``run_torch`` /
``run_jax`` (each framework's side), ``runner`` (parity checks and rows), ``progress`` (the
progress bar and its estimate), ``environment`` (versions, devices, settings), ``peaks``
(datasheet and measured peaks), ``schema`` (the :class:`~benchmarks.schema.Row`),
``report`` (table, verdict, JSON, CSV), ``plots`` (PNGs) and ``targets`` (the project's CPU
targets, read from a results file). Importing this package imports neither torch nor JAX.

Studies that explain a result (profiles, memory plans) live apart, in ``studies/``.
"""

from benchmarks.cli import main

__all__ = ["main"]
