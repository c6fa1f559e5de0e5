"""The guided tour (``notebooks/``): each notebook runs from scratch without an error, in a
kernel that is this Python with this checkout on its path, and the committed copies hold the
outputs of one complete, in-order execution (``make notebooks`` writes them)."""

from __future__ import annotations

import copy
import sys

import nbformat
import pytest

from notebooks.execute import REPO, execute, notebook_paths

NOTEBOOKS = notebook_paths()


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_tour_has_its_two_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01_attention_step_by_step.ipynb",
        "02_one_model_two_frameworks.ipynb",
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
