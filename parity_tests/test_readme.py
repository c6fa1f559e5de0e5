"""Every Python block of the README runs on its own, as written, in a fresh process.

A reader copies one block, not the README: each ```python block runs alone in a new
interpreter (this checkout on its path, a temporary working directory, since blocks write
files such as model.safetensors), so a name a block uses but never defines fails here. A
block that is deliberately a fragment says so on its first line, ``# fragment: <why>``, and
is skipped by that mark; every Python block must be tagged ``python`` so that none hides.
The command lines of the ``sh`` blocks are run with ``--help`` appended: each module and
subcommand exists, every option written is in its help, and every value given parses.
"""

from __future__ import annotations

import os
import re
import shlex
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


def _commands() -> list[tuple[int, list[str]]]:
    """``(line, argv for python -m)`` of each ``python -m ...`` or ``twin-encoder ...`` line."""
    found = []
    for tag, line, code in _blocks():
        if tag != "sh":
            continue
        for i, text in enumerate(code.splitlines()):
            words = shlex.split(text, comments=True)
            if words[:2] == ["python", "-m"]:
                found.append((line + 1 + i, words[2:]))
            elif words[:1] == ["twin-encoder"]:
                found.append((line + 1 + i, ["twin_encoder", *words[1:]]))
    return found


COMMANDS = _commands()


def test_the_sh_blocks_show_every_command():
    shown = {argv[0] if argv[0] != "twin_encoder" else " ".join(argv[:2]) for _, argv in COMMANDS}
    assert shown >= {
        "twin_encoder check",
        "twin_encoder convert",
        "twin_encoder bench",
        "benchmarks",
        "examples.train_side_by_side",
        "examples.attention_maps",
        "examples.divergence_report",
    }


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"line{line}" for line, _ in COMMANDS])
def test_sh_block_command_parses_as_written(line, argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [a for a in argv if a != "--help"]
    run = subprocess.run(
        [sys.executable, "-m", *argv, "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"README.md line {line}: {shlex.join(argv)}\n{run.stderr}"
    assert run.stdout.startswith("usage: ")
    for option in (a.split("=")[0] for a in argv if a.startswith("--")):
        # argparse answers --help before it complains of an unknown option: look it up
        assert re.search(rf"{re.escape(option)}\b", run.stdout), f"line {line}: no {option}"
