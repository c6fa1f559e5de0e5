"""Print the versions of the packages the suite and the benchmarks use, "absent" if missing.

python3 -m benchmarks.versions
"""

from __future__ import annotations

import importlib
import importlib.metadata
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


# read from the installed distribution, not imported: keras picks its backend on import
DISTRIBUTIONS = {"keras": "keras", "keras_hub": "keras-hub"}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            found[name] = "absent"
    for name, dist in DISTRIBUTIONS.items():
        try:
            found[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


if __name__ == "__main__":
    for name, version in versions().items():
        print(f"{name:13s} {version}")
