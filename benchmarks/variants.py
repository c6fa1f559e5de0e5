"""The variants a row can time: one registry, read by the command line, the suites and both
framework runners.

A variant is an *implementation* of the encoder (ours, or a peer: the framework's own
modules, ``transformers``' BERT, keras-hub's BERT) with, for ours, one attention backend of
``shared/backends.py``. Every peer is built from the same format-v1 weights as ours
(``benchmarks/peers/``), and its rows record how far its output is from ours. Each runner
keeps one builder per implementation (``run_torch.BUILDERS``, ``run_jax.BUILDERS``): adding
a peer is one :class:`Variant` here and one builder in each runner that supports it (a
runner without a builder skips the rows, with the reason).

This module needs neither torch nor JAX.
"""

from __future__ import annotations

import dataclasses

from shared.backends import BACKENDS
from shared.config import EncoderConfig, format_of_field

__all__ = [
    "OURS_VARIANTS",
    "PARITY_REFERENCE",
    "PEER_VARIANTS",
    "REGISTRY",
    "VARIANTS",
    "Variant",
    "native_config_problem",
    "variant",
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One thing to time: ``name`` as the command line spells it."""

    name: str
    implementation: str  # which encoder: "ours", or a peer ("native", ...)
    backend: str  # ours: an attention backend of shared/backends.py; a peer: its own name
    description: str
    shardable: bool = False  # the sharding plan of shared/parallel.py applies (ours only)
    frameworks: tuple[str, ...] = ("torch", "jax")  # the runners that can build it
    own_process: bool = False  # built in a child process per row (keras: KERAS_BACKEND)
    package: str | None = None  # the module a peer needs (skipped, with a note, without it)


_OURS = {
    "math": "attention written out: softmax(Q K^T / sqrt(hd)) V",
    "fused": "torch SDPA / jax.nn.dot_product_attention",
    "flash": "FlashAttention-2 written out (torch_impl/flash.py, jax_impl/flash.py)",
}

REGISTRY: dict[str, Variant] = {
    **{
        f"ours-{b}": Variant(f"ours-{b}", "ours", b, _OURS.get(b, b), shardable=True)
        for b in BACKENDS
    },
    "native": Variant(
        "native",
        "native",
        "native",
        "our embeddings + nn.TransformerEncoder, or + a stack of nnx.MultiHeadAttention",
    ),
    "hf": Variant(
        "hf",
        "hf",
        "sdpa",
        'transformers\' BertModel, attn_implementation="sdpa" (PyTorch only)',
        frameworks=("torch",),
        package="transformers",
    ),
    "hf-eager": Variant(
        "hf-eager",
        "hf",
        "eager",
        'transformers\' BertModel, attn_implementation="eager": attention written out',
        frameworks=("torch",),
        package="transformers",
    ),
    "keras": Variant(
        "keras",
        "keras",
        "keras",
        "keras-hub's BertBackbone on Keras 3, its backend the row's framework (a child process)",
        own_process=True,
        package="keras_hub",
    ),
}
VARIANTS: tuple[str, ...] = tuple(REGISTRY)
OURS_VARIANTS: tuple[str, ...] = tuple(n for n, v in REGISTRY.items() if v.implementation == "ours")
# built from another library (their rows' parity: max |peer - ours| in the same framework)
PEER_VARIANTS: tuple[str, ...] = tuple(n for n, v in REGISTRY.items() if v.package is not None)
# what a peer's parity is measured against: ours, the same framework, fused attention
PARITY_REFERENCE = "ours-fused"


def variant(name: str) -> Variant:
    """The registered variant ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"variant={name!r} must be one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


_NATIVE_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def native_config_problem(cfg: EncoderConfig) -> str | None:
    """Why the ``native`` variant cannot compute ``cfg``, or None.

    Its stack (``nn.TransformerEncoderLayer``, or a stack of ``nnx.MultiHeadAttention``) has
    H heads of width D / H with biases, LayerNorm with bias, a two-matrix feed-forward and
    full attention, and is called without a mask: no rotary positions, no causal mask, none
    of the format-3 parts (GQA, GLU, RMSNorm, windows ...), no images.
    """
    if cfg.positional == "rope":
        return "the native modules have no rotary positions: expected positional != 'rope'"
    if cfg.activation not in _NATIVE_ACTIVATIONS:
        return f"the native modules have no activation {cfg.activation!r}: expected one of {_NATIVE_ACTIVATIONS}"
    if cfg.causal or cfg.image_size:
        name = "causal" if cfg.causal else "image_size"
        return f"the native stack is called on token embeddings without a mask: {name}={getattr(cfg, name)!r}"
    plain = EncoderConfig()
    for field in dataclasses.fields(cfg):
        value, expected = getattr(cfg, field.name), getattr(plain, field.name)
        if format_of_field(field) == 3 and value != expected:
            return (
                f"the native modules cannot express {field.name}={value!r} (expected {expected!r})"
            )
    return None
