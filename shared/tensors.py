"""The one table of the model's tensors: format-v1 name, logical axes, and so shape.

Every tensor of the model is one row ``(name, logical axes, present)``: ``name`` is its
format-v1 name (``{i}`` stands for the layer index), ``axes`` names what each array axis
means, and ``present(cfg)`` says whether a config has the tensor. The shape follows from the
axes (:data:`AXIS_SIZES`), the checkpoint's expected shapes follow from the rows
(``shared.weights.expected_shapes``), the sharding follows from rules on the logical axes
(``shared.parallel``), and the framework tables follow from the module paths
(``torch_impl.weights`` / ``jax_impl.weights``, each with a small rename map). Adding a tensor
is one row here.

Logical axes (after MaxText's names; sizes from :class:`~shared.config.EncoderConfig`):

    embed        D   the residual stream
    embed_table  E   the embedding tables' width (embed_dim, or D)
    heads        H hd  the attention heads' columns, head-major: head h is h*hd:(h+1)*hd
    kv_heads     G hd  the K/V heads' columns (grouped-query attention; G = H without)
    head_dim     hd  one head's features (Qwen3's q/k RMSNorm weights)
    mlp          F   the feed-forward block's hidden units
    vocab        V   token rows
    positions    max_len position rows
    types        type_vocab_size token-type rows
    channels     C   image channels (ViT)
    patch        P   one side of an image patch (ViT)
    one          1   a leading axis of length one (the class token)

A new tensor is one row, e.g. a gated feed-forward block's
``*_linear("layers.{i}.ffn.gate", "embed", "mlp")``, or grouped K/V heads' narrower
columns as a new logical axis (``"kv_heads"`` in :data:`AXIS_SIZES`). The sharding rules
then place it; a rule whose mesh axis does not divide the axis leaves it whole, so K/V
heads that "model" does not divide are replicated. Each framework's table maps module paths
to these names through its small rename map and fails loudly (ValueError) when a
parameter has no row or a row no parameter.

NumPy only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from shared.config import EncoderConfig

__all__ = [
    "AXIS_SIZES",
    "LAYER",
    "MODEL",
    "TensorSpec",
    "axes_of",
    "tensors",
]

# logical axis -> its size for a config
AXIS_SIZES: dict[str, Callable[[EncoderConfig], int]] = {
    "embed": lambda cfg: cfg.d_model,
    "embed_table": lambda cfg: cfg.embed_width,
    "heads": lambda cfg: cfg.n_heads * cfg.head_dim,
    "kv_heads": lambda cfg: cfg.kv_heads * cfg.head_dim,
    "head_dim": lambda cfg: cfg.head_dim,
    "mlp": lambda cfg: cfg.d_ff,
    "vocab": lambda cfg: cfg.vocab_size,
    "positions": lambda cfg: cfg.max_len,
    "types": lambda cfg: cfg.type_vocab_size,
    "channels": lambda cfg: cfg.num_channels,
    "patch": lambda cfg: cfg.patch_size,
    "one": lambda cfg: 1,
}


def _always(cfg: EncoderConfig, i: int | None = None) -> bool:
    return True


Row = tuple[str, tuple[str, ...], Callable[[EncoderConfig], bool]]


def _linear(prefix: str, d_in: str, d_out: str, present=_always, bias=_always) -> list[Row]:
    """A linear layer y = x W + b: weight (in, out), bias (out,) where ``bias`` also holds."""
    return [
        (f"{prefix}.weight", (d_in, d_out), present),
        (f"{prefix}.bias", (d_out,), lambda *a: present(*a) and bias(a[0])),
    ]


def _norm(prefix: str, width: str, present=_always) -> list[Row]:
    """The config's norm: scale, one value per feature, and a bias for a LayerNorm with
    one (``norm="layer_norm"``, ``norm_bias``; RMSNorm has none)."""
    return [
        (f"{prefix}.weight", (width,), present),
        (f"{prefix}.bias", (width,), lambda *a: present(*a) and _norm_bias(a[0])),
    ]


def _norm_bias(cfg: EncoderConfig) -> bool:
    return cfg.norm == "layer_norm" and cfg.norm_bias


def _attention_bias(cfg: EncoderConfig) -> bool:
    return cfg.attention_bias


def _mlp_bias(cfg: EncoderConfig) -> bool:
    return cfg.mlp_bias


def _norm1(cfg: EncoderConfig, i: int) -> bool:
    """ModernBERT's layer 0 has no norm before attention (``first_attn_norm=False``)."""
    return i > 0 or cfg.first_attn_norm


def _text(cfg: EncoderConfig) -> bool:
    return not cfg.image_size


def _image(cfg: EncoderConfig) -> bool:
    return bool(cfg.image_size)


# The model's tensors outside the layers, in checkpoint order.
MODEL: tuple[Row, ...] = (
    ("embeddings.patch.weight", ("channels", "patch", "patch", "embed"), _image),
    ("embeddings.patch.bias", ("embed",), _image),
    ("embeddings.class_token", ("one", "embed"), _image),
    ("embeddings.token.weight", ("vocab", "embed_table"), _text),
    (
        "embeddings.position.weight",
        ("positions", "embed_table"),
        lambda c: c.positional == "learned",
    ),
    ("embeddings.token_type.weight", ("types", "embed_table"), lambda c: c.type_vocab_size > 0),
    *_norm("embeddings.norm", "embed_table", lambda c: c.embed_norm),
    *_linear("embeddings.project", "embed_table", "embed", lambda c: bool(c.embed_dim)),
)

# One encoder layer's tensors, ``{i}`` its index, in checkpoint order. A layer row's
# ``present`` may also take the layer index: ``present(cfg, i)``.
LAYER: tuple[Row, ...] = (
    *_linear("layers.{i}.attention.q", "embed", "heads", bias=_attention_bias),
    *_linear("layers.{i}.attention.k", "embed", "kv_heads", bias=_attention_bias),
    *_linear("layers.{i}.attention.v", "embed", "kv_heads", bias=_attention_bias),
    *_linear("layers.{i}.attention.out", "heads", "embed", bias=_attention_bias),
    ("layers.{i}.attention.q_norm.weight", ("head_dim",), lambda c, i: c.qk_norm),
    ("layers.{i}.attention.k_norm.weight", ("head_dim",), lambda c, i: c.qk_norm),
    *_norm("layers.{i}.norm1", "embed", _norm1),
    *_linear("layers.{i}.ffn.gate", "embed", "mlp", lambda c, i: c.gated_ffn, bias=_mlp_bias),
    *_linear("layers.{i}.ffn.in", "embed", "mlp", bias=_mlp_bias),
    *_linear("layers.{i}.ffn.out", "mlp", "embed", bias=lambda c: c.mlp_out_bias),
    *_norm("layers.{i}.norm2", "embed"),
)

FINAL: tuple[Row, ...] = tuple(_norm("final_norm", "embed", lambda c: c.final_norm))


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: format-v1 name, shape, and the logical axis of each axis."""

    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]


def tensors(cfg: EncoderConfig) -> list[TensorSpec]:
    """Every tensor of the model for ``cfg``, in checkpoint order."""
    rows = [
        *((name, axes) for name, axes, present in MODEL if present(cfg)),
        *(
            (name.format(i=i), axes)
            for i in range(cfg.n_layers)
            for name, axes, present in LAYER
            if present(cfg, i)
        ),
        *((name, axes) for name, axes, present in FINAL if present(cfg)),
    ]
    return [TensorSpec(name, tuple(AXIS_SIZES[a](cfg) for a in axes), axes) for name, axes in rows]


_TEMPLATES = {
    re.compile(re.escape(name).replace(re.escape("{i}"), r"\d+")): axes
    for name, axes, _ in (*MODEL, *LAYER, *FINAL)
}


def axes_of(name: str) -> tuple[str, ...]:
    """The logical axes of the format-v1 tensor ``name`` (any config, any layer index).

    Raises ValueError for a name that is not in the table.
    """
    for pattern, axes in _TEMPLATES.items():
        if pattern.fullmatch(name):
            return axes
    raise ValueError(f"{name!r} is not a tensor of the model (shared/tensors.py lists them)")
