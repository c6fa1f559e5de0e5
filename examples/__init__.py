"""Runnable study scripts; run them from the repository root as modules, e.g.
``python -m examples.train_side_by_side --help``. Each has a ``main(argv)`` that the tests call.
"""
