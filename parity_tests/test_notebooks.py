"""The guided tour (``notebooks/``): each notebook runs from scratch without an error, in a
kernel that is this Python with this checkout on its path, and the committed copies hold the
outputs of one complete, in-order execution (``make notebooks`` writes them)."""

from __future__ import annotations

import copy
import re
import sys

import nbformat
import pytest

from notebooks.execute import NOTEBOOKS as FOLDER
from notebooks.execute import REPO, execute, notebook_paths

NOTEBOOKS = notebook_paths()


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _printed(name: str) -> str:
    """Everything the committed notebook ``name`` printed (its stdout), in order."""
    nb = nbformat.read(FOLDER / name, as_version=4)
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    return "".join(o.text for o in outputs if o.output_type == "stream")


def test_the_tour_has_its_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_attention_step_by_step.ipynb",
        "02_one_model_two_frameworks.ipynb",
        "03_what_changed_since_bert.ipynb",
    ]


@pytest.mark.slow
def test_the_kernel_is_this_python_with_this_checkout_first_on_its_path():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import sys, shared\nprint(sys.executable)\nprint(shared.__file__)"
            )
        ]
    )
    out = execute(nb).cells[0].outputs
    printed = "".join(o.text for o in out if o.output_type == "stream").split()
    assert printed == [sys.executable, str(REPO / "shared" / "__init__.py")]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_from_scratch_without_error(path):
    """Outputs cleared, then every cell run in order in a fresh kernel; a cell that raises
    fails the test with its traceback (nbclient's CellExecutionError)."""
    nb = nbformat.read(path, as_version=4)
    for cell in _code_cells(nb):
        cell.outputs, cell.execution_count = [], None
    executed = execute(copy.deepcopy(nb))
    cells = _code_cells(executed)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_holds_one_complete_in_order_execution(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), (
        f"{path.name} was not executed top to bottom in one kernel: run `make notebooks`"
    )
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the pictures are missing"
    assert not [o for o in outputs if o.get("name") == "stderr"], "warnings in the outputs"


def test_notebook_02_evaluates_the_trained_model_in_both_frameworks():
    """Same initial weights, same batches, losses within 1e-5 at every step: the two trained
    models classify alike (a sequence near the decision boundary may flip: 0.01 is 5 of the
    512). jax_impl's Trainer trains pytrees, so the module handed to it keeps its initial
    weights: evaluating that one instead of ``trainer.model`` printed jax 0.510, torch 0.896."""
    printed = _printed("02_one_model_two_frameworks.ipynb")
    found = re.search(
        r"accuracy: torch ([\d.]+), jax ([\d.]+) \(.*majority class: ([\d.]+)\)", printed
    )
    torch_acc, jax_acc, majority = map(float, found.groups())
    assert abs(torch_acc - jax_acc) <= 0.01
    assert min(torch_acc, jax_acc) > majority + 0.1  # both learnt something
    losses = re.findall(r"final loss ([\d.]+)", printed)
    # printed to 4 decimals; the two runs' losses stay within 1e-5 of each other at every step
    assert len(losses) == 2 and abs(float(losses[0]) - float(losses[1])) <= 1e-4


def test_notebook_03_shows_every_part_in_both_frameworks_within_float32_rounding():
    printed = _printed("03_what_changed_since_bert.ipynb")
    compared = [line for line in printed.splitlines() if "max|torch-numpy|" in line]
    parts = [
        "RoPE(q), interleaved=False",
        "RoPE(q), interleaved=True",
        "GeGLU feed-forward",
        "rms_norm, no bias",
        "layer_norm, no bias",
        "GQA, math",
        "GQA, flash",
        "window 2, math",
        "window 2, flash",
        "embeddings",  # then the modern config's three layers, against the oracle
        "layer 0 (full_attention)",
        "layer 1 (sliding_attention)",
        "layer 2 (sliding_attention)",
    ]
    assert [next(p for p in parts if line.startswith(p)) for line in compared] == parts
    for line in compared:
        diffs = re.findall(r"max\|(?:torch-numpy|jax-numpy|torch-jax)\| (\S+)", line)
        assert len(diffs) == 3 and max(map(float, diffs)) < 1e-5, line
    # q_m . k_n after RoPE depends on m - n only: equal along each diagonal up to float64 rounding
    spread = re.search(r"along one diagonal m - n = const: (\S+) ", printed)
    assert float(spread.group(1)) < 1e-12
    # T = 24, window 2, blocks of 4: query block i needs keys 4i - 2 .. 4i + 5, that is key
    # blocks i - 1 .. i + 1; 6 query blocks x 3, less one at each end, of 6 x 6
    assert "16 of 36 key blocks computed, 20 skipped" in printed
    # the tiny ModernBERT: 4 hidden states, each torch, jax and the oracle against transformers
    against = re.findall(r"(torch|jax|oracle) vs transformers (\S+)", printed)
    assert len(against) == 12 and max(float(d) for _, d in against) < 1e-5, against
