"""Every file the project writes gets the permissions the umask gives, atomically.

A checkpoint written 0600 (what ``tempfile.mkstemp`` creates) cannot be read by a group, a
service account or a container; ``open`` would have given 0644 under the usual umask 022.
Each writer is run under three umasks: the mode must be ``0o666 & ~umask`` each time (so
it is neither fixed at 0600 nor at 0644), no temporary file may be left behind, and a bad
output path is named before anything is written.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

import jax_impl
import torch_impl
from shared import EncoderConfig, hf, reference
from shared import weights as v1
from shared.atomic import OutputPathError, write_atomic

ROOT = Path(__file__).resolve().parent.parent
TINY = EncoderConfig(
    vocab_size=30,
    d_model=16,
    n_heads=2,
    d_ff=32,
    n_layers=1,
    max_len=16,
    positional="learned",
    type_vocab_size=2,
    embed_norm=True,
    dropout=0.0,
)
# umask -> the mode open() gives a new file: 0o666 & ~umask
UMASKS = {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}


@pytest.fixture(params=sorted(UMASKS), ids=lambda m: f"umask{m:03o}")
def umask(request):
    """Run the test under this umask, then restore the process's own."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _weights():
    return reference.init_weights(TINY, seed=3)


def _save_file(folder: Path) -> list[Path]:
    v1.save_file(folder / "m.safetensors", _weights(), TINY)
    return [folder / "m.safetensors"]


def _torch_save(folder: Path) -> list[Path]:
    torch_impl.save(torch_impl.from_weights(_weights(), TINY), folder / "t.safetensors")
    return [folder / "t.safetensors"]


def _jax_save(folder: Path) -> list[Path]:
    jax_impl.save(jax_impl.TransformerEncoder(TINY, rngs=nnx.Rngs(0)), folder / "j.safetensors")
    return [folder / "j.safetensors"]


def _hf_save(folder: Path) -> list[Path]:
    hf.save(_weights(), TINY, folder / "hf")
    return [folder / "hf" / "config.json", folder / "hf" / "model.safetensors"]


WRITERS = {
    "shared.weights.save_file": _save_file,
    "torch_impl.save": _torch_save,
    "jax_impl.save": _jax_save,
    "shared.hf.save": _hf_save,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_written_files_have_the_mode_the_umask_gives(tmp_path, umask, writer):
    written = WRITERS[writer](tmp_path)
    for path in written:
        assert _mode(path) == UMASKS[umask], f"{path.name}: mode {_mode(path):o}"
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_overwriting_a_private_file_gives_the_umask_mode_too(tmp_path, umask):
    """The new file replaces the old one (rename): it does not inherit 0600 from it."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o600)
    v1.save_file(path, _weights(), TINY)
    assert _mode(path) == UMASKS[umask]
    assert v1.load_file(path)[1] == TINY


def test_the_command_line_converter_writes_under_the_callers_umask(tmp_path):
    hf.save(_weights(), TINY, tmp_path / "folder")
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "shared.hf", str(tmp_path / "folder"), str(out)]
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        run = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=120, umask=mask, cwd=ROOT
        )
        assert run.returncode == 0, run.stderr
        assert _mode(out) == mode
    assert v1.load_file(out)[1] == TINY


def test_a_missing_folder_or_a_folder_as_the_target_is_named_before_writing(tmp_path):
    with pytest.raises(OutputPathError, match=r"directory .*missing does not exist"):
        v1.save_file(tmp_path / "missing" / "m.safetensors", _weights(), TINY)
    with pytest.raises(OutputPathError, match=r"it is a directory"):
        v1.save_file(tmp_path, _weights(), TINY)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"cannot write folder .*file: it is a file"):
        hf.save(_weights(), TINY, tmp_path / "file")
    with pytest.raises(OutputPathError, match=r"file is a file"):
        hf.save(_weights(), TINY, tmp_path / "file" / "below")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert issubclass(OutputPathError, ValueError)


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert path.read_text() == "old"
