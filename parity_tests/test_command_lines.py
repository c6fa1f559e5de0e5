"""Every command line the project ships: bad arguments end in one ``error:`` line and a
non-zero exit status, never a traceback, and before PyTorch or JAX is imported; ``--help``
answers without importing them either.

Each case runs the command in a fresh interpreter under ``python -X importtime``, which
lists every module the process imported, so "no torch, no jax" is read from the process
itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from shared import EncoderConfig, reference
from shared import weights as v1

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "jax", "flax", "transformers")
TINY = EncoderConfig(  # a BERT: shared.hf.save writes it as model_type "bert"
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
NO_GPU = "needs a machine without a GPU"


def _run(module: str, argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, set]:
    """Run ``python -m module *argv``; ``(the process, the top-level modules it imported)``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    imported, stderr = set(), []
    for line in run.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            imported.add(name.split(".")[0])
        else:
            stderr.append(line)
    run.stderr = "\n".join(stderr)
    return run, imported


def _gpu_present() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, a Hugging Face folder, an empty folder and a file, written once."""
    root = tmp_path_factory.mktemp("cli")
    from shared import hf

    weights = reference.init_weights(TINY, seed=0)
    v1.save_file(root / "model.safetensors", weights, TINY)
    hf.save(weights, TINY, root / "hf")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a folder")
    return {"root": root, "ckpt": root / "model.safetensors", "hf": root / "hf"}


# (module, argv with {placeholders}, exit status, the error line's pattern)
BAD = [
    ("shared.hf", [], 2, r"the following arguments are required: folder, out"),
    ("shared.hf", ["/nonexistent", "out.safetensors"], 2, r"/nonexistent does not exist"),
    (
        "shared.hf",
        ["{hf}", "/missing-dir/out.safetensors"],
        2,
        r"cannot write /missing-dir/out\.safetensors: directory /missing-dir does not exist",
    ),
    ("shared.hf", ["{hf}", "{empty}"], 2, r"cannot write .*empty: it is a directory"),
    ("shared.hf", ["{empty}", "out.safetensors"], 1, r"empty has no config\.json"),
    ("twin_encoder", [], 2, r"a command is required: check, convert, bench"),
    ("twin_encoder", ["nope"], 2, r"unknown command 'nope'"),
    ("twin_encoder", ["check"], 2, r"the following arguments are required: path"),
    ("twin_encoder", ["check", "/nonexistent"], 2, r"/nonexistent does not exist"),
    ("twin_encoder", ["check", "{empty}"], 2, r"empty is a folder without config\.json"),
    (
        "twin_encoder",
        ["check", "{ckpt}", "--json", "/missing-dir/r.json"],
        2,
        r"cannot write /missing-dir/r\.json: directory /missing-dir does not exist",
    ),
    ("twin_encoder", ["check", "{ckpt}", "--modes", "fp8"], 2, r"--modes: 'fp8': expected"),
    ("twin_encoder", ["check", "{ckpt}", "--batch", "0"], 2, r"--batch: '0': expected a pos"),
    ("twin_encoder", ["check", "{ckpt}", "--device", "mps"], 2, r"--device: invalid choice"),
    ("twin_encoder", ["convert", "{hf}", "{empty}"], 2, r"it is a directory"),
    ("examples.divergence_report", ["--checkpoint", "/nope"], 2, r"--checkpoint /nope does not"),
    ("examples.divergence_report", ["--hf", "{empty}"], 2, r"--hf .*empty has no config\.json"),
    (
        "examples.divergence_report",
        ["--heads", "3"],
        2,
        r"--d-model 128 is not divisible by --heads 3",
    ),
    ("examples.divergence_report", ["--device", "mps"], 2, r"--device: invalid choice"),
    ("examples.divergence_report", ["--out", "{file}"], 2, r"--out .*file\.txt is a file"),
    ("examples.attention_maps", ["--hf", "/nope"], 2, r"--hf /nope is not a folder"),
    ("examples.attention_maps", ["--hf", "{hf}", "--layer", "9"], 2, r"--layer 9 is out of rang"),
    ("examples.attention_maps", ["--layer", "-1"], 2, r"--layer: '-1': expected an integer >= 0"),
    ("examples.attention_maps", ["--folder", "x"], 2, r"unrecognized arguments: --folder x"),
    ("examples.train_side_by_side", ["--steps", "0"], 2, r"--steps: '0': expected a positive"),
    (
        "examples.train_side_by_side",
        ["--steps", "20", "--warmup", "30"],
        2,
        r"--steps 20 must exceed --warmup 30",
    ),
    ("examples.train_side_by_side", ["--heads", "3"], 2, r"--d-model 64 is not divisible by"),
    ("examples.train_side_by_side", ["--task", "nope"], 2, r"--task: invalid choice"),
    ("examples.train_side_by_side", ["--out", "{file}"], 2, r"--out .*file\.txt is a file"),
]


def _fill(argv: list[str], paths: dict[str, Path]) -> list[str]:
    names = {
        "hf": paths["hf"],
        "ckpt": paths["ckpt"],
        "empty": paths["root"] / "empty",
        "file": paths["root"] / "file.txt",
    }
    return [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]


@pytest.mark.parametrize(
    ("module", "argv", "status", "pattern"),
    BAD,
    ids=[f"{m}:{' '.join(a) or '(none)'}" for m, a, _, _ in BAD],
)
def test_bad_arguments_end_in_one_error_line_before_torch_or_jax_is_imported(
    paths, module, argv, status, pattern
):
    run, imported = _run(module, _fill(argv, paths), paths["root"])
    assert run.returncode == status, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{run.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert run.stdout == ""
    assert imported.isdisjoint(HEAVY), f"imported {sorted(imported & set(HEAVY))}"


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("twin_encoder", ["check", "{ckpt}", "--device", "gpu"]),
        ("examples.divergence_report", ["--device", "gpu"]),
        ("examples.divergence_report", ["--device", "tpu"]),
    ],
    ids=["check-gpu", "divergence-gpu", "divergence-tpu"],
)
def test_an_absent_device_is_named_in_one_line(paths, module, argv):
    if _gpu_present():
        pytest.skip(NO_GPU)
    run, _ = _run(module, _fill(argv, paths), paths["root"])
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    device = argv[-1]
    assert re.fullmatch(
        rf"error: --device {device}: no {device} here; devices present: cpu\S*", run.stderr.strip()
    ), run.stderr


HELP = [
    ("shared.hf", []),
    ("twin_encoder", []),
    ("twin_encoder", ["check"]),
    ("twin_encoder", ["convert"]),
    ("twin_encoder", ["bench"]),
    ("benchmarks", []),
    ("examples.divergence_report", []),
    ("examples.attention_maps", []),
    ("examples.train_side_by_side", []),
]


@pytest.mark.parametrize(("module", "argv"), HELP, ids=[" ".join([m, *a]) for m, a in HELP])
def test_help_answers_without_importing_torch_or_jax(tmp_path, module, argv):
    run, imported = _run(module, [*argv, "--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: "), run.stdout[:200]
    assert imported.isdisjoint(HEAVY), f"imported {sorted(imported & set(HEAVY))}"


def test_help_texts_say_what_the_tools_now_take(tmp_path):
    divergence, _ = _run("examples.divergence_report", ["--help"], tmp_path)
    assert "format 1 to 3" in divergence.stdout
    assert re.search(r"--device \{cpu,gpu,tpu,auto\}", divergence.stdout)
    assert "Exit status" in divergence.stdout
    maps, _ = _run("examples.attention_maps", ["--help"], tmp_path)
    assert "--hf FOLDER" in maps.stdout and "--folder" not in maps.stdout
    check, _ = _run("twin_encoder", ["check", "--help"], tmp_path)
    assert "usage: twin-encoder check" in check.stdout and "--json OUT" in check.stdout
    convert, _ = _run("twin_encoder", ["convert", "--help"], tmp_path)
    assert convert.stdout.startswith("usage: twin-encoder convert")


def test_bench_forwards_to_the_benchmarks_command_line(tmp_path):
    ours, _ = _run("twin_encoder", ["bench", "--suite", "nope"], tmp_path)
    theirs, _ = _run("benchmarks", ["--suite", "nope"], tmp_path)
    assert ours.returncode == theirs.returncode == 2
    assert "Traceback" not in ours.stderr
    assert ours.stderr.strip().splitlines()[-1] == theirs.stderr.strip().splitlines()[-1]
    assert "error:" in ours.stderr.strip().splitlines()[-1]


def test_the_console_script_entry_point_resolves_to_the_dispatcher():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["scripts"]["twin-encoder"]
    module, _, attribute = target.partition(":")
    import importlib

    import twin_encoder.cli

    assert getattr(importlib.import_module(module), attribute) is twin_encoder.cli.main
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "twin_encoder*" in include  # installed with the project, not only in a checkout
    assert set(twin_encoder.cli.COMMANDS) == {"check", "convert", "bench"}


def test_convert_writes_the_checkpoint_it_names(paths, tmp_path):
    run, imported = _run("twin_encoder", ["convert", str(paths["hf"]), "out.safetensors"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("wrote out.safetensors: BERT, 1 layer, d_model 16")
    weights, cfg = v1.load_file(tmp_path / "out.safetensors")
    assert cfg.d_model == TINY.d_model and cfg.n_layers == 1
    want = reference.init_weights(TINY, seed=0)
    np.testing.assert_array_equal(weights["layers.0.ffn.in.weight"], want["layers.0.ffn.in.weight"])
    assert imported.isdisjoint(HEAVY)  # a conversion is NumPy and safetensors only
