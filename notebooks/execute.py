"""Execute the tour's notebooks from scratch, in a fresh kernel each, and write the outputs back.

    python -m notebooks.execute                  # every notebook, in place (``make notebooks``)
    python -m notebooks.execute notebooks/01_attention_step_by_step.ipynb

The kernel is the ``python3`` kernel of the Python that runs this module (jupyter_client
launches a kernel spec's ``python`` as ``sys.executable``), started in ``notebooks/`` with the
repository root first on ``PYTHONPATH`` and ``HF_HUB_OFFLINE=1``, so that the notebooks import
this checkout and download nothing. Any error in any cell stops the run with the cell and the
traceback (``nbclient.exceptions.CellExecutionError``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient

__all__ = ["NOTEBOOKS", "REPO", "TIMEOUT_S", "execute", "kernel_env", "main", "notebook_paths"]

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
TIMEOUT_S = 300  # per cell; a whole notebook takes about a minute on 2 cores


def notebook_paths() -> list[Path]:
    """The tour's notebooks, in reading order (their names start with 01_, 02_, ...)."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def kernel_env() -> dict[str, str]:
    """This process's environment, with the repository first on the path and no downloads."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else os.pathsep.join([str(REPO), path])
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # tqdm warns, with this machine's paths, that ipywidgets (progress bars) is not installed
    env["PYTHONWARNINGS"] = "ignore:IProgress not found"
    return env


def execute(nb: nbformat.NotebookNode, *, timeout: int = TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in order in a fresh kernel; return it with its new outputs."""
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the committed notebooks
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    return client.execute(env=kernel_env())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: every notebook of the tour")
    args = parser.parse_args(argv)
    for path in args.paths or notebook_paths():
        start = time.perf_counter()
        nb = execute(nbformat.read(path, as_version=4))
        nbformat.write(nb, path)
        print(f"{path}: executed in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
