"""Atomic file writes with ordinary permissions: the one way this project writes a file.

A checkpoint, ``config.json`` or any other file is written to a temporary file in the same
folder, flushed to disk, then renamed over the target (``os.replace``, atomic on POSIX and
Windows). A crash or an error at any point leaves either the old file or the new one, never
half a file, and the temporary file is removed.

The temporary file is created with mode ``0o666`` filtered by the process umask, as ``open``
creates any file: under the usual umask 022 a checkpoint is 0644, readable by a group, a
service account or a container. ``tempfile.mkstemp`` always creates 0600, and so does
safetensors' own ``save_file`` (0.8): a writer that leaves the temporary file with another
mode has it set back before the rename.

Before anything is written, :func:`check_output_path` names the two mistakes a command line
sees most (a parent folder that does not exist, a target that is a folder) as an
:class:`OutputPathError` instead of an error about a temporary file the caller never named.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["OutputPathError", "check_output_folder", "check_output_path", "write_atomic"]


class OutputPathError(ValueError):
    """A file cannot be written where it was asked for (the message says why)."""


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, if a file can be written there; else :class:`OutputPathError`.

    Raises when the parent folder does not exist (or is not a folder), or when ``path`` is
    an existing folder. Writes nothing.
    """
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a directory; expected a file path")
    if not parent.exists():
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: {parent} is not a directory")
    return path


def check_output_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a ``Path``, if it is a folder or can be created as one (with its missing
    parents); else :class:`OutputPathError` (it, or an ancestor, is a file). Writes nothing."""
    folder = Path(folder)
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                what = "it is" if ancestor == folder else f"{ancestor} is"
                raise OutputPathError(f"cannot write folder {folder}: {what} a file")
            break
    return folder


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file, which replaces ``path``.

    Args:
        path: the file to write; its folder must exist (:func:`check_output_path`).
        write: called with the temporary file's path (a ``str``; the file exists, empty,
            with mode ``0o666 & ~umask``); it writes the content there, by name. Should it
            replace the file with one of another mode, the mode is set back.

    Raises:
        OutputPathError: ``path`` is a folder or its parent folder does not exist (before
            anything is written).
        Whatever ``write`` or the rename raises; the temporary file is removed first and an
        existing ``path`` is left as it was.
    """
    path = check_output_path(path)
    tmp = _create_temporary(path)
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, as open() made it
    try:
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)  # a writer that made its own file (safetensors: 0600)
        fd = os.open(tmp, os.O_RDWR)  # writable: Windows will not flush a read-only handle
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _create_temporary(path: Path) -> str:
    """An empty, new file beside ``path``; mode ``0o666`` less the umask, as ``open`` gives."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except PermissionError:
            raise OutputPathError(
                f"cannot write {path}: no permission to create files in {path.parent}"
            ) from None
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows it: POSIX folders can be fsynced
    (Windows cannot open one; some network file systems refuse with EINVAL). The file is in
    place either way, so a refusal here is not an error."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the rename stands; only its durability across a power cut is not forced
    finally:
        os.close(fd)
