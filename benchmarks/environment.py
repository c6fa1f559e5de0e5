"""The machine and the frameworks: what is installed, which devices exist, the settings
applied to both frameworks (threads, matmul precision, compile caches), and the record of
all of it that goes into ``results.json``.

Order matters: :func:`prepare_process` sets environment variables that torch and JAX read
when they are imported, so it runs before either is imported.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "DeviceUnavailable",
    "available_devices",
    "capture",
    "configure_precision",
    "import_frameworks",
    "prepare_process",
    "resolve_device",
    "usable_cores",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


class DeviceUnavailable(Exception):
    """The requested device is not present (the CLI exits with code 2)."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare_process(cache_dir: Path) -> None:
    """Environment for torch and JAX, before they are imported.

    * JAX must not grab 75% of the GPU up front (``XLA_PYTHON_CLIENT_PREALLOCATE=false``):
      torch shares the device, and memory peaks are measured per call.
    * Fresh, empty compile caches for this run (Inductor, Triton, and JAX's persistent cache
      below ``cache_dir``), so that "cold" compile times are cold; "warm" ones are taken by
      compiling again once these caches are filled.
    """
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")


def import_frameworks(wanted: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Import each wanted framework with what the benchmarks need of it.

    Returns ``(modules, skipped)``: ``modules["torch"]`` / ``modules["jax"]`` for those that
    imported, and for the others the reason (a framework that is not installed is skipped,
    not an error).
    """
    needs = {"torch": ("torch", "torch_impl"), "jax": ("jax", "flax", "optax", "jax_impl")}
    modules: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        try:
            for module in needs[name]:
                importlib.import_module(module)
            modules[name] = importlib.import_module(name)
        except Exception as e:  # ImportError, or a broken install raising anything
            skipped[name] = f"cannot import: {type(e).__name__}: {e}"
    return modules, skipped


def _torch_xla_importable() -> bool:
    try:
        importlib.import_module("torch_xla")
    except Exception:
        return False
    return True


def available_devices(modules: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """``{device: frameworks that can run on it}`` for the devices present.

    CPU: every imported framework. GPU: torch with CUDA, JAX with a GPU backend. TPU: JAX
    with a TPU backend, and torch only through torch_xla (experimental).
    """
    found: dict[str, list[str]] = {"cpu": list(modules)}
    torch = modules.get("torch")
    jax = modules.get("jax")
    if torch is not None and torch.cuda.is_available():
        found.setdefault("gpu", []).append("torch")
    for kind in ("gpu", "tpu"):
        if jax is not None and _jax_has(jax, kind):
            found.setdefault(kind, []).append("jax")
    if "tpu" in found and torch is not None and _torch_xla_importable():
        found["tpu"].insert(0, "torch")
    return {device: tuple(fws) for device, fws in found.items() if fws}


def _jax_has(jax: Any, kind: str) -> bool:
    try:
        return bool(jax.devices(kind))
    except RuntimeError:  # "Unknown backend"
        return False


def resolve_device(requested: str, available: dict[str, tuple[str, ...]]) -> str:
    """``auto`` -> the best device present (gpu, then tpu, then cpu); else check it exists."""
    if requested == "auto":
        for device in ("gpu", "tpu", "cpu"):
            if device in available:
                return device
    if requested not in available:
        present = ", ".join(f"{d} ({', '.join(fws)})" for d, fws in available.items())
        raise DeviceUnavailable(
            f"device {requested!r} is not available on this machine; available: {present or 'none'}"
        )
    return requested


def configure_precision(modules: dict[str, Any], *, tf32: bool) -> dict[str, Any]:
    """Matched matmul precision in both frameworks; returns the settings as applied.

    Default: true float32 in both (JAX ``jax_default_matmul_precision="highest"``, which
    also stops bfloat16 passes on TPUs; torch TF32 off). ``tf32``: TF32 in both, on GPUs.
    """
    record: dict[str, Any] = {"float32_matmuls": "tf32" if tf32 else "float32"}
    mode = "tf32" if tf32 else "float32"
    if modules.get("jax") is not None:
        import jax_impl.precision

        record |= jax_impl.precision.set_matmul_precision(mode)
    if modules.get("torch") is not None:
        import torch_impl.precision

        record |= torch_impl.precision.set_matmul_precision(mode)
    return record


def configure_compile_cache(modules: dict[str, Any], cache_dir: Path) -> None:
    """JAX's persistent compilation cache in ``cache_dir``, storing every executable."""
    jax = modules.get("jax")
    if jax is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: other work on the machine disturbs timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _git() -> dict[str, Any] | None:
    """The commit the benchmarks ran from, and whether the tree had local changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def device_names(modules: dict[str, Any], device: str) -> dict[str, str]:
    """What each framework calls the device it runs on."""
    names: dict[str, str] = {}
    torch = modules.get("torch")
    jax = modules.get("jax")
    if torch is not None:
        if device == "gpu" and torch.cuda.is_available():
            names["torch"] = torch.cuda.get_device_name(0)
        elif device == "cpu":
            names["torch"] = _cpu_model()
    if jax is not None and (device == "cpu" or _jax_has(jax, device)):
        d = jax.devices(device)[0]
        names["jax"] = _cpu_model() if device == "cpu" else d.device_kind
    return names


def framework_reports(modules: dict[str, Any]) -> dict[str, str]:
    """Each framework's own environment report: ``torch.utils.collect_env`` (versions, CUDA,
    cuDNN, CPU, the relevant pip packages) and ``jax.print_environment_info`` (versions,
    devices, ``nvidia-smi`` where present). A report that fails says why instead."""
    reports: dict[str, str] = {}
    if modules.get("torch") is not None:
        try:
            from torch.utils import collect_env

            reports["torch"] = collect_env.get_pretty_env_info()
        except Exception as e:  # it shells out (pip, nvidia-smi): anything may go wrong
            reports["torch"] = f"torch.utils.collect_env failed: {type(e).__name__}: {e}"
    jax = modules.get("jax")
    if jax is not None:
        try:
            reports["jax"] = jax.print_environment_info(return_string=True)
        except Exception as e:
            reports["jax"] = f"jax.print_environment_info failed: {type(e).__name__}: {e}"
    return reports


def capture(
    modules: dict[str, Any],
    *,
    device: str,
    argv: list[str],
    precision: dict[str, Any],
    skipped: dict[str, str],
) -> dict[str, Any]:
    """Everything about the machine and the software that a result depends on."""
    torch = modules.get("torch")
    jax = modules.get("jax")
    versions = {
        name: _version(dist)
        for name, dist in (
            ("torch", "torch"),
            ("jax", "jax"),
            ("jaxlib", "jaxlib"),
            ("flax", "flax"),
            ("optax", "optax"),
            ("numpy", "numpy"),
            ("torch_xla", "torch_xla"),
            ("matplotlib", "matplotlib"),
            ("transformers", "transformers"),  # the hf peer
            ("keras", "keras"),  # the keras peer
            ("keras_hub", "keras-hub"),
        )
    }
    versions["python"] = platform.python_version()
    if torch is not None:
        versions["torch_cuda"] = torch.version.cuda
        versions["cudnn"] = (
            torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        )
    threads: dict[str, Any] = {"usable_cores": usable_cores()}
    if torch is not None:
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_inter_op"] = torch.get_num_interop_threads()
    if jax is not None:
        threads["xla"] = "all usable cores (XLA sizes its own CPU thread pool)"
    device_count = {}
    if jax is not None and (device == "cpu" or _jax_has(jax, device)):
        device_count["jax"] = len(jax.devices(device))
    if torch is not None and device == "gpu":
        device_count["torch"] = torch.cuda.device_count()
    env_keys = (
        "XLA_FLAGS",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "TPU_VISIBLE_CHIPS",
    )
    return {
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *argv]),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "logical_cores": os.cpu_count()},
        "memory_bytes": _memory_bytes(),
        "load_average_start": load_average(),
        "git": _git(),
        "versions": versions,
        "device": {
            "kind": device,
            "names": device_names(modules, device),
            "count": device_count,
        },
        "threads": threads,
        "precision": precision,
        "compile_caches": (
            "fresh, empty Inductor/Triton/JAX persistent caches per run. compile_s_cold: the "
            "first compilation of the row's program in this process (kernels it shares with "
            "an earlier row may come from Inductor's cache); compile_s_warm: the same program "
            "compiled again after resetting Dynamo / clearing JAX's in-memory caches, served "
            "by the persistent caches. Compiler start-up is paid before the first row."
        ),
        "env": {k: os.environ[k] for k in env_keys if k in os.environ},
        "skipped_frameworks": skipped,
        "framework_reports": framework_reports(modules),
    }
