"""Test configuration: device choice, full float32 precision and strict JAX in both frameworks.

``pytest --device cpu|gpu|tpu`` (default cpu) runs the suite on that device; tests skip,
saying why, when it is absent. Precision settings are applied once per session and
recorded in the report header.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import pytest
import torch

import jax_impl.precision
import torch_impl.precision
from parity_tests.helpers import tiny_config

# Parity needs true float32 matmuls: JAX defaults to TF32 on recent NVIDIA GPUs and to
# bfloat16 passes on TPU; PyTorch may allow TF32. Strict JAX catches silent promotions.
jax_impl.precision.set_matmul_precision("float32")
torch_impl.precision.set_matmul_precision("float32")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

DEVICES = ("cpu", "gpu", "tpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", default="cpu", choices=DEVICES, help="device to run the suite on (default cpu)"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"device: {config.getoption('--device')}; torch {torch.__version__}, jax {jax.__version__}",
        "precision: jax_default_matmul_precision=highest, torch allow_tf32=False, "
        "float32_matmul_precision=highest; jax dtype promotion strict, rank promotion raise",
    ]


def _available(device: str) -> bool:
    try:
        return bool(jax.devices(device)) if device != "cpu" else True
    except RuntimeError:
        return False


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The device under test: "cpu", "gpu" or "tpu"."""
    name = pytestconfig.getoption("--device")
    if not _available(name):
        pytest.skip(f"--device {name}: JAX sees no {name} here (devices: {jax.devices()})")
    return name


@pytest.fixture(scope="session")
def torch_device(device: str) -> torch.device:
    """The PyTorch device for the device under test (skips on TPU: torch_xla is not used)."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "gpu":
        if not torch.cuda.is_available():
            pytest.skip("--device gpu: torch.cuda.is_available() is False")
        return torch.device("cuda")
    pytest.skip("--device tpu: PyTorch on TPU (torch_xla) is not part of the parity suite")


@pytest.fixture(autouse=True)
def _jax_default_device(device: str):
    """Put every JAX array of a test on the device under test."""
    with jax.default_device(jax.devices(device)[0]):
        yield


@pytest.fixture
def make_config():
    """The factory of tiny test configs: ``make_config(n_layers=1)`` (``helpers.tiny_config``;
    module-level tables of configs call that function directly)."""
    return tiny_config
