"""The two implementations by name: ``IMPLS["torch"]`` is ``torch_impl``, ``IMPLS["jax"]``
is ``jax_impl``, imported on first access (``shared`` itself never imports a framework).

Both packages export the same adapter names, so code that runs either framework can be
written once::

    from shared.frameworks import IMPLS

    for name, impl in IMPLS.items():
        model = impl.from_weights(weights, cfg, dtype=impl.DTYPES["float32"])
        print(name, impl.to_numpy(model(input_ids)).shape)

Adapters: ``TransformerEncoder``, ``DTYPES`` (dtype name -> framework dtype), ``to_numpy``,
``export_weights``, ``import_weights``, ``save``, ``load``, ``from_weights``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

__all__ = ["FRAMEWORKS", "IMPLS"]

FRAMEWORKS = ("torch", "jax")


class _Implementations(Mapping[str, ModuleType]):
    """A read-only mapping framework name -> implementation package, imported lazily."""

    def __getitem__(self, name: str) -> ModuleType:
        if name not in FRAMEWORKS:
            raise KeyError(f"unknown framework {name!r}; known: {FRAMEWORKS}")
        return importlib.import_module(f"{name}_impl")

    def __iter__(self) -> Iterator[str]:
        return iter(FRAMEWORKS)

    def __len__(self) -> int:
        return len(FRAMEWORKS)


IMPLS: Mapping[str, ModuleType] = _Implementations()
