"""Print the versions of the packages the suite and the benchmarks use, "absent" if missing.

python3 -m benchmarks.versions
"""

from __future__ import annotations

import importlib
import platform

PACKAGES = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "transformers",
    "pytest",
    "hypothesis",
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            found[name] = "absent"
    return found


if __name__ == "__main__":
    for name, version in versions().items():
        print(f"{name:13s} {version}")
