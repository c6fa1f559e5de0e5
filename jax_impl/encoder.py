"""The Transformer encoder in JAX / Flax NNX: embeddings, encoder layer (post- and pre-norm), stack.

Mirrors ``torch_impl/encoder.py`` statement for statement.

Notation: B batch, T sequence length, D d_model, E embedding width, F d_ff, V vocab_size,
N n_layers.

Initialisation (the same distributions in both implementations): linear weights Xavier
uniform, biases zero, embedding tables N(0, 1), LayerNorm scale one and bias zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.attention import MultiHeadAttention, RMSNorm, linear
from jax_impl.precision import check_dtype
from shared.backends import check_remat
from shared.config import EncoderConfig
from shared.inputs import Spec, check_inputs, check_pixels
from shared.positional import check_position_ids, rope_inverse_frequencies, sinusoidal

__all__ = [
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "PatchEmbeddings",
    "PatchProjection",
    "TokenEmbeddings",
    "TransformerEncoder",
    "pack_outputs",
]


class Constant(nnx.Variable):
    """A fixed array that is not a parameter (like a PyTorch buffer): the sinusoid table."""


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "relu":
        return jax.nn.relu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)  # exact erf form (JAX defaults to tanh)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu(x)  # x * sigmoid(x)
    raise ValueError(f"unknown activation {name!r}")


def layer_norm(
    cfg: EncoderConfig, dtype, rngs: nnx.Rngs, *, width: int | None = None
) -> nnx.LayerNorm | RMSNorm:
    """The config's norm: LayerNorm (with a bias unless ``norm_bias=False``) or RMSNorm."""
    check_dtype(dtype)
    if cfg.norm == "rms_norm":
        return RMSNorm(width or cfg.d_model, cfg.layer_norm_eps, dtype=dtype)
    # Flax defaults to eps 1e-6 and the fast variance E[x^2] - E[x]^2; PyTorch does neither.
    return nnx.LayerNorm(
        width or cfg.d_model,
        epsilon=cfg.layer_norm_eps,
        use_bias=cfg.norm_bias,
        use_fast_variance=False,
        param_dtype=dtype or jnp.float32,
        rngs=rngs,
    )


def _embedding(rows: int, cfg: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        rows,
        cfg.embed_width,
        embedding_init=nnx.initializers.normal(stddev=1.0),
        param_dtype=dtype or jnp.float32,
        rngs=rngs,
    )


def _class_token(cfg: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.Param:
    shape = (1, cfg.d_model)  # (1, D), N(0, 1)
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype or jnp.float32))


class PatchProjection(nnx.Module):
    """ViT's patch projection: each P x P patch of a (B, C, H, W) image, flattened, times W + b.

    transformers writes it as a Conv2d with kernel = stride = P; that is this matmul. The
    weight is kept (C, P, P, D), as the checkpoint stores it.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        check_dtype(dtype)
        self.patch_size = cfg.patch_size
        c, p, d = cfg.num_channels, cfg.patch_size, cfg.d_model
        init = nnx.initializers.xavier_uniform()
        weight = init(rngs.params(), (c * p * p, d), dtype or jnp.float32)
        self.weight = nnx.Param(weight.reshape(c, p, p, d))
        self.bias = nnx.Param(jnp.zeros((d,), dtype or jnp.float32))

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """(B, C, H, W) -> (B, N, D), patches in row-major order over the grid."""
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        x = x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)
        return x @ self.weight[...].reshape(c * p * p, -1) + self.bias[None, None]  # (B, N, D)


class TokenEmbeddings(nnx.Module):
    """A text model's front end: token + position (+ token type), then LayerNorm if
    ``embed_norm``, then dropout, then a projection E -> D if ``embed_dim`` (ELECTRA; the
    tables are E wide, else D).

    The sum is not scaled by sqrt(D) (the paper scales token embeddings; BERT does not).
    Sinusoidal positions extend past ``max_len``; learned ones cannot. Positions are
    0..T-1, or, with ``position_pad_id`` (RoBERTa), counted over the non-pad ids
    (:meth:`position_ids`, the one place positions are computed), unless the call passes
    ``position_ids`` (:meth:`positions`). With RoPE (``positional="rope"``) nothing is
    added here: the positions rotate q and k in every layer.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        check_dtype(dtype)
        self.config = cfg
        self.token = _embedding(cfg.vocab_size, cfg, dtype, rngs)
        self.position = (
            _embedding(cfg.max_len, cfg, dtype, rngs) if cfg.positional == "learned" else None
        )
        if cfg.positional == "sinusoidal":
            table = sinusoidal(cfg.max_len, cfg.embed_width)  # (max_len, E), float64
            table = jnp.asarray(table, dtype=dtype or jnp.float32)
            self.sinusoid = Constant(table)
        self.token_type = (
            _embedding(cfg.type_vocab_size, cfg, dtype, rngs) if cfg.type_vocab_size else None
        )
        self.norm = layer_norm(cfg, dtype, rngs, width=cfg.embed_width) if cfg.embed_norm else None
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.project = (
            linear(cfg.embed_dim, cfg.d_model, dtype=dtype, rngs=rngs) if cfg.embed_dim else None
        )

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """(1, T) positions 0..T-1, or (B, T) RoBERTa's (with ``position_pad_id``): real
        tokens count from pad + 1, pads sit at pad.

        RoBERTa's are computed from the ids, as transformers does (not from the attention
        mask), so that left padding and pads inside a sequence give the same positions.
        """
        pad = self.config.position_pad_id
        if pad is None:
            return jnp.arange(input_ids.shape[1])[None]  # (1, T)
        real = (input_ids != pad).astype(jnp.int32)  # (B, T)
        return jnp.cumsum(real, axis=1) * real + pad

    def positions(self, input_ids: jax.Array, position_ids: jax.Array | None = None) -> jax.Array:
        """(B|1, T) positions of a call: ``position_ids`` checked (integer (B, T) or (1, T),
        in [0, max_len) for a learned table, else >= 0), or :meth:`position_ids`' default."""
        if position_ids is None:
            return self.position_ids(input_ids)
        check_position_ids(self.config, _values(position_ids), *input_ids.shape)
        return _index(position_ids)

    def position_vectors(self, position_ids: jax.Array) -> jax.Array:
        """(B|1, T) positions -> (B|1, T, E) position vectors (learned, or the sinusoid)."""
        if self.position is not None:
            return self.position(position_ids)
        table = self.sinusoid[...]
        if position_ids.shape[-1] > table.shape[0]:  # the sinusoid extends past max_len
            table = sinusoidal(position_ids.shape[-1], self.config.embed_width)
            table = jnp.asarray(table, dtype=self.sinusoid.dtype)
        return table[position_ids]

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        pixel_values: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """input_ids (B, T) -> ``(x (B, T, D), key_padding_mask (B, T) bool or None)``.

        Checks the arguments (``shared.inputs``); ``pixel_values`` is an error here.
        ``position_ids`` (B|1, T) replace the default positions (:meth:`positions`).
        """
        if pixel_values is not None or input_ids is None:
            given = (input_ids, attention_mask, token_type_ids)
            check_pixels(self.config, _values(pixel_values), **_given(given))
        check_inputs(
            self.config, _values(input_ids), _values(attention_mask), _values(token_type_ids)
        )
        input_ids = _index(input_ids)
        x = self.token(input_ids)  # (B, T, E)
        if self.config.positional != "rope":  # RoPE rotates q and k in the layers instead
            x = x + self.position_vectors(self.positions(input_ids, position_ids))  # + (B|1, T, E)
        if self.token_type is not None:
            if token_type_ids is None:
                types = jnp.zeros_like(input_ids)
            else:
                types = _index(token_type_ids)
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        if self.project is not None:
            x = self.project(x)  # (B, T, E) -> (B, T, D)
        if attention_mask is None:
            return x, None
        return x, jnp.asarray(attention_mask).astype(bool)  # (B, T)


class PatchEmbeddings(nnx.Module):
    """A ViT's front end: (B, C, H, W) -> (B, 1 + N, D): the class token, then one token per
    patch (:class:`PatchProjection`), plus learned positions over all 1 + N, then dropout
    (no LayerNorm, as ViT). No padding: the key padding mask is None.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        self.config = cfg
        self.patch = PatchProjection(cfg, dtype=dtype, rngs=rngs)
        self.class_token = _class_token(cfg, dtype, rngs)
        self.position = _embedding(cfg.max_len, cfg, dtype, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        pixel_values: jax.Array | None = None,
        position_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, None]:
        """pixel_values (B, C, H, W) -> ``(x (B, 1 + N, D), None)``. Checks the arguments
        (``shared.inputs``): the token arguments and ``position_ids`` are an error here."""
        if position_ids is not None:
            raise ValueError(
                "position_ids are for text models; a ViT's positions are its patches "
                "(expected position_ids=None)"
            )
        if pixel_values is not None:
            pixel_values = jnp.asarray(pixel_values)
        given = (input_ids, attention_mask, token_type_ids)
        check_pixels(self.config, _values(pixel_values), **_given(given))
        weight = self.patch.weight
        x = self.patch(pixel_values.astype(weight.dtype))  # (B, N, D)
        cls = jnp.broadcast_to(self.class_token[None], (x.shape[0], 1, x.shape[-1]))  # (B, 1, D)
        x = jnp.concatenate([cls, x], axis=1)  # (B, 1 + N, D)
        x = x + self.position.embedding[None]  # (B, 1 + N, D) + (1, 1 + N, D)
        return self.dropout(x), None


class FeedForward(nnx.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to each position alike; with
    ``gated_ffn`` a GLU (Shazeer 2020): (act(x W_gate + b_gate) * (x W_1 + b_1)) W_2 + b_2
    (GeGLU with gelu, SwiGLU with silu). Biases as ``mlp_bias`` / ``mlp_out_bias`` say."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs) -> None:
        check_dtype(dtype)
        self.activation = cfg.activation
        d, f, bias = cfg.d_model, cfg.d_ff, cfg.mlp_bias
        self.gate_proj = linear(d, f, dtype=dtype, bias=bias, rngs=rngs) if cfg.gated_ffn else None
        self.in_proj = linear(d, f, dtype=dtype, bias=bias, rngs=rngs)
        self.out_proj = linear(f, d, dtype=dtype, bias=cfg.mlp_out_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        # Position-wise: every token is one row. As 2-D matmuls, XLA:CPU's backward pass runs
        # about twice as fast as on (B, T, D) (benchmarks/results/README.md has the figures).
        x = x.reshape(b * t, d)
        h = self.in_proj(x)  # (B*T, F)
        if self.gate_proj is None:
            h = activation(self.activation, h)
        else:
            h = activation(self.activation, self.gate_proj(x)) * h
        return self.out_proj(h).reshape(b, t, d)  # (B, T, D)


def attention_options(cfg: EncoderConfig) -> dict:
    """The config's optional attention parts, as ``MultiHeadAttention``'s arguments."""
    return {
        "n_kv_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "bias": cfg.attention_bias,
        "qk_norm_eps": cfg.layer_norm_eps if cfg.qk_norm else None,
        "rope_interleaved": cfg.rope_interleaved,
    }


class EncoderLayer(nnx.Module):
    """Self-attention and feed-forward, each wrapped in dropout, a residual and a LayerNorm.

    Post-norm (the paper): x = LN(x + Dropout(Sublayer(x))).
    Pre-norm (``norm_first``): x = x + Dropout(Sublayer(LN(x))).
    Dropout sits where the paper puts it: on each sub-layer's output. (PyTorch's
    ``nn.TransformerEncoderLayer`` also drops attention weights and FFN activations.)
    ``remat="attention"`` recomputes the attention sub-block in the backward
    (``_checkpointed``: a ``jax.custom_vjp``); the stack handles ``"block"``.

    Layer ``index`` reads its own parts of the config: its window (``cfg.layer_window``), its
    RoPE base (``cfg.layer_rope_theta``; the table ``inv_freq`` is a constant, not a
    parameter), and, for ModernBERT's layer 0 (``first_attn_norm=False``), no norm1.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype=None,
        remat: str = "none",
        index: int = 0,
        rngs: nnx.Rngs,
    ) -> None:
        check_dtype(dtype)
        self.remat = check_remat(remat)
        self.norm_first = cfg.norm_first
        self.window = cfg.layer_window(index)
        self.attention = MultiHeadAttention(
            cfg.d_model,
            cfg.n_heads,
            **attention_options(cfg),
            backend=backend,
            dtype=dtype,
            rngs=rngs,
        )
        if cfg.positional == "rope":
            inv_freq = rope_inverse_frequencies(cfg.head_dim, cfg.layer_rope_theta(index))
            acc = jnp.float64 if dtype == jnp.float64 else jnp.float32
            self.inv_freq = Constant(jnp.asarray(inv_freq, dtype=acc))
        else:
            self.inv_freq = None
        skip = index == 0 and not cfg.first_attn_norm
        self.norm1 = None if skip else layer_norm(cfg, dtype, rngs)
        self.ffn = FeedForward(cfg, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(cfg, dtype, rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        key_padding_mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        return_attention: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        """x (B, T, D) -> ``(x (B, T, D), attention weights (B, H, T, T) or None)``.

        ``mask`` (general), ``key_padding_mask`` (B, T) and ``is_causal`` go to the attention
        as they are (``MultiHeadAttention`` documents them), with the layer's window;
        ``positions`` (B|1, T) rotate q and k when the config has RoPE.
        """
        masks = {"mask": mask, "key_padding_mask": key_padding_mask, "is_causal": is_causal}
        masks["window"] = self.window
        masks["rope"] = None if self.inv_freq is None else (positions, self.inv_freq[...])
        if self.norm_first:
            y = x if self.norm1 is None else self.norm1(x)
            a, weights = self._attend(y, masks, return_attention)
            x = x + self.dropout(a)
            x = x + self.dropout(self.ffn(self.norm2(x)))
        else:
            a, weights = self._attend(x, masks, return_attention)
            x = self.norm1(x + self.dropout(a))
            x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, weights

    def _attend(self, x, masks, return_attention):
        attention = self.attention
        if self.remat == "attention":
            attention = _checkpointed(attention)
        if return_attention:
            return attention(x, **masks, return_attention=True)
        return attention(x, **masks), None


class Encoder(nnx.Module):
    """N encoder layers, then a final LayerNorm if ``final_norm`` (pre-norm models need one).

    ``remat`` (one of ``shared.backends.REMATS``): ``"block"`` recomputes each layer in the
    backward, keeping only its input; ``"attention"`` recomputes each attention sub-block.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype=None,
        remat: str = "none",
        rngs: nnx.Rngs,
    ) -> None:
        check_dtype(dtype)
        self.remat = check_remat(remat)
        self.layers = nnx.List(
            [
                EncoderLayer(cfg, backend=backend, dtype=dtype, remat=remat, index=i, rngs=rngs)
                for i in range(cfg.n_layers)
            ]
        )
        self.final_norm = layer_norm(cfg, dtype, rngs) if cfg.final_norm else None

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        key_padding_mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ) -> tuple[jax.Array, list[jax.Array] | None, list[jax.Array] | None]:
        """x (B, T, D) -> ``(x, attentions or None, hidden_states or None)``; ``positions``
        (B|1, T) are the RoPE positions (with ``positional="rope"``).

        ``hidden_states`` holds N + 1 arrays: the input, then each layer's output (before
        the final norm); ``attentions`` holds each layer's (B, H, T, T) weights.
        """
        attentions = [] if return_attention else None
        hidden_states = [x] if return_hidden_states else None
        for layer in self.layers:
            if self.remat == "block":
                layer = _checkpointed(layer)
            x, weights = layer(
                x,
                mask,
                key_padding_mask=key_padding_mask,
                is_causal=is_causal,
                positions=positions,
                return_attention=return_attention,
            )
            if return_attention:
                attentions.append(weights)
            if return_hidden_states:
                hidden_states.append(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, attentions, hidden_states


class TransformerEncoder(nnx.Module):
    """Embeddings, then the encoder stack. Starts in train mode (dropout on), like the PyTorch one.

    The front end is chosen once, here: :class:`TokenEmbeddings` for a text model,
    :class:`PatchEmbeddings` for a ViT (``image_size``); each checks its own arguments and
    returns ``(x, key_padding_mask)``, and one call runs the rest.

    Args:
        cfg: the model's hyperparameters.
        backend: one of ``shared.backends.BACKENDS``: ``"math"`` (explicit attention), ``"fused"``
            (``jax.nn.dot_product_attention``) or ``"flash"`` (FlashAttention-2, ``jax_impl/flash.py``).
        dtype: parameter dtype (default float32), e.g. ``jnp.float64`` (needs ``jax_enable_x64``)
            or ``jnp.bfloat16``.
        remat: activation checkpointing, one of ``shared.backends.REMATS``: ``"none"``,
            ``"block"`` (recompute each encoder layer in the backward) or ``"attention"``
            (recompute each attention sub-block). Gradients are unchanged; ValueError
            naming the choices for any other value.
        rngs: parameter initialisation and dropout keys.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype=None,
        remat: str = "none",
        rngs: nnx.Rngs,
    ) -> None:
        check_dtype(dtype)
        self.config = cfg
        embeddings = PatchEmbeddings if cfg.image_size else TokenEmbeddings
        self.embeddings = embeddings(cfg, dtype=dtype, rngs=rngs)
        self.encoder = Encoder(cfg, backend=backend, dtype=dtype, remat=remat, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        pixel_values: jax.Array | None = None,
        mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ):
        """input_ids (B, T) -> hidden states (B, T, D).

        Args:
            input_ids: (B, T) integer token ids in [0, vocab_size).
            attention_mask: (B, T), 1/True = real token, 0/False = padding (keys only:
                outputs at padded positions are computed and finite, but meaningless).
            token_type_ids: (B, T) segment ids; row 0 when omitted (if the config has types).
            mask: general boolean attention mask (B|1, H|1, T|1, T), True = may attend;
                combines (logical and) with ``attention_mask`` and ``is_causal``.
            position_ids: (B, T) or (1, T) integer positions (>= 0; < max_len for a learned table) replacing the
                default 0..T-1 (RoBERTa: counted from the ids): with left padding, pass them.
                With RoPE they rotate q and k in every layer (Su et al. 2021).
            is_causal: position t attends only to positions <= t.
            return_attention: also return each layer's (B, H, T, T) attention weights.
            return_hidden_states: also return the N + 1 hidden states (embeddings, then each
                layer's output before the final norm).
            pixel_values: (B, C, H, W) floats, for a ViT (``image_size``) instead of the token
                arguments; the output is then (B, 1 + N patches, D), class token first.

        Returns:
            ``h``, or the tuple ``(h, attentions)``, ``(h, hidden_states)`` or
            ``(h, attentions, hidden_states)``, as requested.

        Raises:
            ValueError (TypeError for a wrong dtype) naming the argument, expected and got.
        """
        x, key_padding_mask = self.embeddings(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            position_ids=position_ids,
        )  # (B, T, D), (B, T) or None
        positions = None
        if self.config.positional == "rope":  # (B|1, T): they rotate q and k in each layer
            positions = self.embeddings.positions(_index(input_ids), position_ids)
        if mask is not None:
            mask = jnp.asarray(mask)
        x, attentions, hidden_states = self.encoder(
            x,
            mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal or self.config.causal,
            positions=positions,
            return_attention=return_attention,
            return_hidden_states=return_hidden_states,
        )
        return pack_outputs(x, attentions, hidden_states)


def _checkpointed(module):
    """``module``'s call, recomputed in the backward instead of keeping its activations: the
    call's inputs are its only residuals, no intermediate of the block, element-wise or
    matmul; dropout replays the same keys. Array arguments (nested ones included) are
    traced; the others (flags, None) are fixed for the call.

    Written with ``jax.custom_vjp`` rather than ``jax.checkpoint`` for the order: a
    ``jax.checkpoint`` recomputation needs only the block's inputs, so XLA:CPU's schedulers
    may run it as early as the forward pass and keep every block's activations at once (its
    optimization barriers are removed before scheduling). Here the backward recomputes from
    inputs made to depend on the incoming cotangent, and passes its own cotangent on only
    once its parameter gradients exist (:func:`_after`), so each block is recomputed when
    the backward reaches it and its activations are freed before the next one's. Reverse
    mode only: ``jax.jvp`` through it is a TypeError (``jax.checkpoint`` allowed it). What
    XLA's buffer plan then holds is measured by ``studies/remat.py``."""

    def call(*args, **kwargs):
        leaves, treedef = jax.tree.flatten((args, kwargs))
        traced = [isinstance(leaf, jax.Array) for leaf in leaves]
        arrays = [leaf for leaf, t in zip(leaves, traced, strict=True) if t]
        graphdef, rng, rest = nnx.split(module, nnx.RngState, ...)
        drew = []

        def run(rng, rest, arrays):
            given = iter(arrays)
            values = [next(given) if t else leaf for leaf, t in zip(leaves, traced, strict=True)]
            call_args, call_kwargs = jax.tree.unflatten(treedef, values)
            m = nnx.merge(graphdef, rng, rest, copy=True)  # leaves the residuals as they are
            out = m(*call_args, **call_kwargs)
            new = nnx.state(m, nnx.RngState)
            pairs = zip(jax.tree.leaves(rng), jax.tree.leaves(new), strict=True)
            drew.append(any(a is not b for a, b in pairs))
            return out, new

        out, rng = _recomputed(run)(rng, rest, arrays)
        if drew[-1]:  # dropout drew keys: write the advanced counters back, as a plain call does
            nnx.update(module, rng)
        return out

    return call


def _recomputed(fn):
    """``fn`` with a VJP that keeps only ``fn``'s inputs and runs ``fn`` again in the
    backward, on inputs that depend on the cotangent (``_after``)."""

    @jax.custom_vjp
    def f(rng, rest, arrays):
        return fn(rng, rest, arrays)

    def forward(rng, rest, arrays):
        return fn(rng, rest, arrays), (rng, rest, arrays)

    def backward(residuals, cotangent):
        rng, rest, arrays = residuals
        rng, arrays = _after(cotangent, (rng, arrays))
        _, vjp = jax.vjp(fn, rng, rest, arrays)
        d_rng, d_rest, d_arrays = vjp(cotangent)
        # the cotangent passed on to the blocks before this one waits for this block's
        # parameter gradients, so its recomputed activations are freed before the next
        # block's recomputation starts
        return d_rng, d_rest, _after(d_rest, d_arrays)

    f.defvjp(forward, backward)
    return f


def _after(source, tree):
    """``tree``'s arrays with the same values, computed after ``source`` (a pytree: an
    incoming cotangent, or parameter gradients): each numeric leaf of ``tree`` passes
    through a select on whether ``source`` holds a NaN (tested on the largest magnitude of
    its float leaves). A data dependency that XLA cannot simplify away, so no instruction
    order runs what reads ``tree`` before ``source`` exists. Values: unchanged unless
    ``source`` holds a NaN; then the float leaves become NaN and the integer ones zero
    (the gradient is not finite then anyway). Typed PRNG keys pass as they are (the
    counter beside them carries the dependency)."""
    floats = [
        jnp.max(jnp.abs(c)).astype(jnp.float32)
        for c in jax.tree.leaves(source)
        if jnp.issubdtype(c.dtype, jnp.inexact) and c.size
    ]
    if not floats:
        return tree
    probe = functools.reduce(jnp.maximum, floats)
    nan = probe != probe  # True only if the source holds a NaN

    def tie(x):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(nan, probe.astype(x.dtype), x)
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
            return jnp.where(nan, jnp.zeros_like(x), x)
        return x

    return jax.tree.map(tie, tree)


def pack_outputs(x, attentions, hidden_states):
    """``x``, or the tuple of ``x`` and whichever of the two lists was asked for (not None)."""
    outputs = (x, *(o for o in (attentions, hidden_states) if o is not None))
    return outputs[0] if len(outputs) == 1 else outputs


def _given(arguments) -> dict[str, bool]:
    """Which token arguments a call gave, for ``check_pixels``."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: a is not None for name, a in zip(names, arguments, strict=True)}


Embeddings = TokenEmbeddings  # the name before the ViT front end became its own module


def _index(x) -> jax.Array:
    """An integer argument (any integer dtype, values already checked) as
    ``shared.inputs.INDEX_DTYPE``, int32: the same dtype in both frameworks."""
    return jnp.asarray(x).astype(jnp.int32)


def _values(x) -> np.ndarray | Spec | None:
    """What validation may read of an argument: its values only when they are on the host.

    Shapes and dtypes are always checked. Values (id ranges, 0/1 masks) are checked only for
    host arrays: NumPy arrays, lists and JAX arrays on one CPU device. An array on an
    accelerator or sharded over several devices gives only its shape and kind, so a call
    never waits on the device or gathers a sharded input onto one host; neither does a call
    while ``jax.jit`` traces.
    """
    if x is None:
        return None
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if isinstance(x, jax.core.Tracer) or not _on_one_cpu(x):
        return Spec(tuple(x.shape), x.dtype.kind)
    return np.asarray(x)


def _on_one_cpu(x: jax.Array) -> bool:
    devices = x.sharding.device_set
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"
