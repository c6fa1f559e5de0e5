"""The attention backends, named once for both frameworks, the benchmarks and the tests.

Each implementation maps every name here to one attention function (``ATTENTION`` in
``torch_impl/attention.py`` and ``jax_impl/attention.py``), chosen once when a
``MultiHeadAttention`` is built. Benchmark variants (``ours-<name>``), CLI choices, plot
colours and targets derive from this table, so a new backend is one new row.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "BACKEND_INFO", "REMATS", "Backend", "backend_info", "check_remat"]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    returns_weights: bool  # False: a call with return_attention=True runs "math" instead


BACKEND_INFO: tuple[Backend, ...] = (
    Backend("math", "softmax(Q K^T / sqrt(hd)) V written out; materialises (B, H, T, S)", True),
    Backend(
        "fused", "the framework's fused kernel (PyTorch SDPA, jax.nn.dot_product_attention)", False
    ),
    Backend(
        "flash", "FlashAttention-2 written out: blocks, online softmax, memory linear in T", False
    ),
)

BACKENDS: tuple[str, ...] = tuple(b.name for b in BACKEND_INFO)


def backend_info(name: str) -> Backend:
    """The row for ``name``; ValueError naming the known backends otherwise."""
    for b in BACKEND_INFO:
        if b.name == name:
            return b
    raise ValueError(f"backend={name!r} must be one of {BACKENDS}")


REMATS: tuple[str, ...] = ("none", "block", "attention")
"""Activation checkpointing (rematerialisation), orthogonal to the attention backend:
``"none"`` keeps every activation the backward needs; ``"block"`` keeps only each encoder
layer's input and recomputes the layer in the backward; ``"attention"`` recomputes only the
attention sub-block (its q, k, v, weights and output), keeping the rest."""


def check_remat(remat: str) -> str:
    """``remat`` if it is one of :data:`REMATS`; ValueError naming the choices otherwise."""
    if remat not in REMATS:
        raise ValueError(f"remat={remat!r} must be one of {REMATS}")
    return remat
