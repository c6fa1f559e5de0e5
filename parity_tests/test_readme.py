"""Every Python block of the README runs on its own, as written, in a fresh process.

A reader copies one block, not the README: each ```python block runs alone in a new
interpreter (this checkout on its path, a temporary working directory, since blocks write
files such as model.safetensors), so a name a block uses but never defines fails here. A
block that is deliberately a fragment says so on its first line, ``# fragment: <why>``, and
is skipped by that mark; every Python block must be tagged ``python`` so that none hides.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", flags=re.S | re.M)
FRAGMENT = re.compile(r"# fragment: \S")
TIMEOUT_S = 600  # the pretrained-model block imports torch, JAX and transformers


def _blocks() -> list[tuple[str, int, str]]:
    """``(language tag, line number, code)`` of every fenced block."""
    text = README.read_text()
    return [
        (m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)
    ]


PYTHON = [(line, code) for tag, line, code in _blocks() if tag == "python"]


def test_python_blocks_are_tagged_python_and_fragments_say_why():
    assert len(PYTHON) >= 5, "README has lost its Python examples"
    other = [(tag, line) for tag, line, _ in _blocks() if tag in ("py", "python3", "pycon")]
    assert other == [], f"tag these blocks ```python so that the test runs them: {other}"
    for line, code in PYTHON:
        first = code.splitlines()[0]
        if first.startswith("# fragment"):
            assert FRAGMENT.match(first), f"line {line}: write '# fragment: <why>'"


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line{line}" for line, _ in PYTHON])
def test_python_block_runs_alone_in_a_fresh_process(line, code, tmp_path):
    if code.startswith("# fragment:"):
        pytest.skip(code.splitlines()[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # as a reader's shell has it: a block sets what it needs
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, f"README.md block at line {line} failed:\n{run.stderr[-3000:]}"
