"""Flax's own ``nnx.MultiHeadAttention``, and an encoder stack made only of Flax's modules,
built from an ``EncoderConfig`` and loaded from (or saved to) checkpoint format v1.

Mirrors ``torch_impl/native.py``: the same functions, tables and order. Flax has no
encoder-layer module, so :class:`NativeEncoderLayer` and :class:`NativeEncoder` assemble
``nnx.MultiHeadAttention``, ``nnx.LayerNorm`` and ``nnx.Linear`` the way PyTorch's
``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` do, with PyTorch's attribute
names (``self_attn``, ``linear1``, ``norm1``, ``norm`` ...), so the two weight tables match
row for row. These modules are what the parity tests hold ours against.

Notation: B batch, T query length, S key length, D d_model, H heads, hd head_dim, F d_ff.

How Flax's modules differ from ours (each difference is pinned by a test in
``parity_tests/test_native.py``):

* weight layout: ``nnx.Linear.kernel`` is (in, out) like format v1, but the attention
  kernels keep the heads as an axis: q, k, v kernels (D, H, hd), biases (H, hd), and the
  output kernel (H, hd, D);
* masks: True = may attend, as ours (no conversion);
* ``nnx.LayerNorm`` defaults to eps 1e-6 and the fast variance E[x^2] - E[x]^2; built here
  with the config's eps and ``use_fast_variance=False``;
* attention weights come out only through ``sow_weights=True`` (per head);
* a query row with no key to attend to is filled with ``finfo.min``, not -inf: every key
  gets the same weight 1/S and the row averages V; ours gives zeros;
* ``nnx.MultiHeadAttention`` needs ``decode`` and, with dropout, ``deterministic``: built
  with ``decode=False``; ``.eval()`` makes it deterministic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.encoder import layer_norm
from jax_impl.precision import check_dtype
from shared import layouts
from shared.config import EncoderConfig

__all__ = [
    "ATTENTION_TABLE",
    "NativeEncoder",
    "NativeEncoderLayer",
    "attention_with_weights",
    "encoder_table",
    "export_attention",
    "export_encoder",
    "import_attention",
    "import_encoder",
    "native_activation",
    "native_attention",
    "native_encoder",
]

Weights = dict[str, np.ndarray]
Row = layouts.Row  # (native name, format-v1 name(s), layout)

# Layouts: shared/layouts.py.

# nnx.MultiHeadAttention            format v1 (under "attention.")                layout
ATTENTION_TABLE: tuple[Row, ...] = (
    ("query.kernel", ("q.weight",), "heads_out"),
    ("query.bias", ("q.bias",), "heads_out"),
    ("key.kernel", ("k.weight",), "heads_out"),
    ("key.bias", ("k.bias",), "heads_out"),
    ("value.kernel", ("v.weight",), "heads_out"),
    ("value.bias", ("v.bias",), "heads_out"),
    ("out.kernel", ("out.weight",), "heads_in"),
    ("out.bias", ("out.bias",), "copy"),
)

# NativeEncoderLayer                format v1 (under "layers.{i}.")               layout
_LAYER_TABLE: tuple[Row, ...] = (
    *layouts.prefixed(ATTENTION_TABLE, "self_attn.", "attention."),
    ("norm1.scale", ("norm1.weight",), "copy"),
    ("norm1.bias", ("norm1.bias",), "copy"),
    ("linear1.kernel", ("ffn.in.weight",), "copy"),
    ("linear1.bias", ("ffn.in.bias",), "copy"),
    ("linear2.kernel", ("ffn.out.weight",), "copy"),
    ("linear2.bias", ("ffn.out.bias",), "copy"),
    ("norm2.scale", ("norm2.weight",), "copy"),
    ("norm2.bias", ("norm2.bias",), "copy"),
)

# NativeEncoder(norm=...)           format v1                                     layout
_FINAL_NORM_TABLE: tuple[Row, ...] = (
    ("norm.scale", ("final_norm.weight",), "copy"),
    ("norm.bias", ("final_norm.bias",), "copy"),
)


def encoder_table(n_layers: int, *, final_norm: bool) -> list[Row]:
    """Every parameter of the native encoder stack with its format-v1 source, in order."""
    rows = layouts.stacked(_LAYER_TABLE, n_layers, "layers.{i}.")
    return rows + list(_FINAL_NORM_TABLE if final_norm else ())


# --- building the native modules ---------------------------------------------------------


def native_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The JAX function for our activation name (``jax.nn.gelu`` defaults to tanh: not here)."""
    if name == "relu":
        return jax.nn.relu
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    raise ValueError(f"activation={name!r} has no JAX equivalent here")


def native_attention(
    d_model: int, n_heads: int, *, dropout: float = 0.0, dtype=None, rngs: nnx.Rngs
) -> nnx.MultiHeadAttention:
    """``nnx.MultiHeadAttention`` for self-attention over (B, T, D), without a decode cache.

    ``broadcast_dropout=False`` drops each weight independently, as PyTorch does (Flax's
    default shares one dropout mask across batch and heads).
    """
    check_dtype(dtype)
    return nnx.MultiHeadAttention(
        num_heads=n_heads,
        in_features=d_model,
        dropout_rate=dropout,
        broadcast_dropout=False,
        decode=False,
        param_dtype=dtype or jnp.float32,
        rngs=rngs,
    )


class NativeEncoderLayer(nnx.Module):
    """PyTorch's ``nn.TransformerEncoderLayer``, assembled from Flax's own modules.

    Post-norm: x = norm1(x + dropout1(SA(x))); x = norm2(x + dropout2(FF(x))).
    Pre-norm: x = x + dropout1(SA(norm1(x))); x = x + dropout2(FF(norm2(x))).
    FF(x) = linear2(dropout(act(linear1(x)))); SA drops attention weights, as PyTorch's.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        check_dtype(dtype)
        self.norm_first = cfg.norm_first
        self.activation = native_activation(cfg.activation)
        self.self_attn = native_attention(
            cfg.d_model, cfg.n_heads, dropout=cfg.dropout, dtype=dtype, rngs=rngs
        )
        self.linear1 = nnx.Linear(
            cfg.d_model, cfg.d_ff, param_dtype=dtype or jnp.float32, rngs=rngs
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.linear2 = nnx.Linear(
            cfg.d_ff, cfg.d_model, param_dtype=dtype or jnp.float32, rngs=rngs
        )
        self.norm1 = layer_norm(cfg, dtype, rngs)
        self.norm2 = layer_norm(cfg, dtype, rngs)
        self.dropout1 = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.dropout2 = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x (B, T, D), mask (B|1, 1|H, T, T) True = may attend -> (B, T, D)."""
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), mask)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, mask))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        return self.dropout1(self.self_attn(x, mask=mask))

    def _ff_block(self, x: jax.Array) -> jax.Array:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class NativeEncoder(nnx.Module):
    """PyTorch's ``nn.TransformerEncoder``: N layers, then ``norm`` if ``cfg.final_norm``."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        check_dtype(dtype)
        self.layers = nnx.List(
            [NativeEncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.n_layers)]
        )
        self.norm = layer_norm(cfg, dtype, rngs) if cfg.final_norm else None

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x (B, T, D), mask (B|1, 1|H, T, T) True = may attend -> (B, T, D)."""
        for layer in self.layers:
            x = layer(x, mask)
        if self.norm is not None:
            x = self.norm(x)
        return x


def native_encoder(cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> NativeEncoder:
    """:class:`NativeEncoder` with the layers, eps, activation and norm placement of ``cfg``.

    The stack only: no embeddings (``cfg.vocab_size``, ``max_len``, ``positional`` are not
    used). Starts in train mode (dropout on), like PyTorch's; ``.eval()`` turns it off.
    Its parameters are Flax's initialisation until :func:`import_encoder`.
    """
    return NativeEncoder(cfg, dtype=dtype, rngs=rngs)


def attention_with_weights(
    mha: nnx.MultiHeadAttention, x: jax.Array, *, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Self-attention through ``mha``, returning ``(output (B, T, D), weights (B, H, T, S))``.

    Mask in Flax's convention: boolean, broadcastable to (B, H, T, S), True = may attend.
    Flax hands the weights out only by sowing them into an ``nnx.Intermediate``, collected
    here with ``nnx.capture`` (the module itself keeps nothing).
    """
    out, sown = nnx.capture(mha, nnx.Intermediate)(x, mask=mask, sow_weights=True)
    (weights,) = sown["attention_weights"].get_value()  # one call, one entry
    return out, weights


# --- weights ---------------------------------------------------------------------------------


def import_attention(
    mha: nnx.MultiHeadAttention, weights: Weights, *, prefix: str = ""
) -> nnx.MultiHeadAttention:
    """Copy format-v1 attention weights (``{prefix}q.weight`` ... ``{prefix}out.bias``) into ``mha``.

    ``prefix`` selects one layer of a whole checkpoint, e.g. ``"layers.0.attention."``.
    """
    rows = layouts.prefixed(ATTENTION_TABLE, ours=prefix)
    _copy_in(mha, rows, weights, mha.num_heads)
    return mha


def export_attention(mha: nnx.MultiHeadAttention, *, prefix: str = "") -> Weights:
    """The weights of ``mha`` in format v1, names ``{prefix}q.weight`` ... ``{prefix}out.bias``."""
    rows = layouts.prefixed(ATTENTION_TABLE, ours=prefix)
    return _copy_out(mha, rows)


def import_encoder(encoder: NativeEncoder, weights: Weights) -> NativeEncoder:
    """Copy the ``layers.*`` and ``final_norm.*`` tensors of a format-v1 map into ``encoder``.

    Other tensors (the embeddings) are not read, so a whole checkpoint can be passed.
    """
    _copy_in(encoder, _table_of(encoder), weights, encoder.layers[0].self_attn.num_heads)
    return encoder


def export_encoder(encoder: NativeEncoder) -> Weights:
    """The ``layers.*`` (and ``final_norm.*``) tensors of format v1, from ``encoder``."""
    return _copy_out(encoder, _table_of(encoder))


def _table_of(encoder: NativeEncoder) -> list[Row]:
    return encoder_table(len(encoder.layers), final_norm=encoder.norm is not None)


def _parameter(module: nnx.Module, path: str) -> nnx.Param:
    """The parameter at a dotted path such as ``layers.0.self_attn.query.kernel``."""
    node = module
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _copy_in(module: nnx.Module, rows: Sequence[Row], weights: Weights, n_heads: int) -> None:
    shapes = {native: tuple(_parameter(module, native).shape) for native, _, _ in rows}
    arrays = layouts.to_outside(rows, weights, shapes=shapes, n_heads=n_heads)
    for native, array in arrays.items():
        param = _parameter(module, native)
        param[...] = jnp.asarray(array, dtype=param.dtype)


def _copy_out(module: nnx.Module, rows: Sequence[Row]) -> Weights:
    arrays = {}
    for native, _, _ in rows:
        t = _parameter(module, native)[...]
        if t.dtype in (jnp.bfloat16, jnp.float16):
            t = t.astype(jnp.float32)  # NumPy has no bfloat16
        arrays[native] = np.asarray(t)
    return layouts.from_outside(rows, arrays)  # copies, never views of the parameters
