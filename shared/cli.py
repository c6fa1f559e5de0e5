"""What every command line of the project shares: usage errors on one line, no traceback.

A command checks its arguments before it imports PyTorch or JAX or does any work, and a
mistake ends it with exit status 2 and one line on stderr, ``error: <what is wrong>``.
Standard library only, so that ``--help`` and a usage error answer at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn

__all__ = ["USAGE_ERROR", "ArgumentParser", "fail", "with_option_names"]

USAGE_ERROR = 2  # argparse's own status for a usage error


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line:
    ``error: MESSAGE (see PROG --help)``, exit status 2 (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def fail(message: str, status: int = USAGE_ERROR) -> int:
    """Print ``error: MESSAGE`` as one line on stderr; return ``status`` for ``main`` to return."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def with_option_names(message: str, options: dict[str, str]) -> str:
    """``message`` on one line, each ``field=`` of a config written as the option that sets it
    (``{"total_steps": "--steps"}``: ``"total_steps=0 ..."`` -> ``"--steps 0 ..."``)."""

    def option(match: re.Match) -> str:
        name = match.group(1)
        return f"{options[name]} " if name in options else match.group(0)

    return re.sub(r"\b(\w+)=", option, " ".join(str(message).split()))
