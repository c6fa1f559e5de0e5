"""``twin-encoder``: one command, three subcommands. Each forwards its arguments to the module
that owns them, imported only when it runs, so ``--help`` answers at once.

    twin-encoder check PATH [--json OUT]   parity of a checkpoint or Hugging Face folder
    twin-encoder convert FOLDER OUT        = python -m shared.hf
    twin-encoder bench ...                 = python -m benchmarks
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from shared.cli import fail

__all__ = ["COMMANDS", "main"]

PROG = "twin-encoder"


def _check(argv: list[str]) -> int:
    from twin_encoder.check import main

    return main(argv, prog=f"{PROG} check")


def _convert(argv: list[str]) -> int:
    from shared.hf import main

    return main(argv, prog=f"{PROG} convert")


def _bench(argv: list[str]) -> int:
    from benchmarks.cli import main

    return main(argv)


# name -> (run, one-line summary)
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "check": (
        _check,
        "a checkpoint or HF folder in PyTorch, JAX (and transformers), layer by layer; "
        "exit 1 outside the tolerance table",
    ),
    "convert": (_convert, "convert a Hugging Face folder to a checkpoint (python -m shared.hf)"),
    "bench": (_bench, "run the benchmarks (python -m benchmarks)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} {{{','.join(COMMANDS)}}} ...",
        "",
        "One Transformer encoder in PyTorch and JAX: check parity, convert, benchmark.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        f"{PROG} COMMAND --help describes each.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return fail(f"a command is required: {', '.join(COMMANDS)} (see {PROG} --help)")
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name not in COMMANDS:
        return fail(
            f"unknown command {name!r}; expected one of {', '.join(COMMANDS)} (see {PROG} --help)"
        )
    return COMMANDS[name][0](rest)
