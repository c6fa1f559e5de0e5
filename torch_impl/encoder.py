"""The Transformer encoder in PyTorch: embeddings, encoder layer (post- and pre-norm), stack.

Mirrors ``jax_impl/encoder.py`` statement for statement.

Notation: B batch, T sequence length, D d_model, E embedding width, F d_ff, V vocab_size,
N n_layers.

Initialisation (the same distributions in both implementations): linear weights Xavier
uniform, biases zero, embedding tables N(0, 1), LayerNorm scale one and bias zero.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from shared.backends import check_remat
from shared.config import EncoderConfig
from shared.inputs import Spec, check_inputs, check_pixels
from shared.positional import check_position_ids, rope_inverse_frequencies, sinusoidal
from torch_impl.attention import MultiHeadAttention, RMSNorm, dtype_kind, linear
from torch_impl.precision import as_dtype

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


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)  # exact erf form (PyTorch's default)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)  # x * sigmoid(x)
    raise ValueError(f"unknown activation {name!r}")


def layer_norm(
    cfg: EncoderConfig, dtype: torch.dtype | None, *, width: int | None = None
) -> nn.LayerNorm | RMSNorm:
    """The config's norm: LayerNorm (with a bias unless ``norm_bias=False``) or RMSNorm."""
    if cfg.norm == "rms_norm":
        return RMSNorm(width or cfg.d_model, cfg.layer_norm_eps, dtype=dtype)
    return nn.LayerNorm(
        width or cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.norm_bias, dtype=dtype
    )


def _embedding(rows: int, cfg: EncoderConfig, dtype: torch.dtype | None) -> nn.Embedding:
    embedding = nn.Embedding(rows, cfg.embed_width, dtype=dtype)
    nn.init.normal_(embedding.weight, std=1.0)
    return embedding


def _class_token(cfg: EncoderConfig, dtype: torch.dtype | None) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, cfg.d_model, dtype=dtype))  # (1, D), N(0, 1)


class PatchProjection(nn.Module):
    """ViT's patch projection: each P x P patch of a (B, C, H, W) image, flattened, times W + b.

    transformers writes it as a Conv2d with kernel = stride = P; that is this matmul. The
    weight is kept (C, P, P, D), as the checkpoint stores it.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        c, p, d = cfg.num_channels, cfg.patch_size, cfg.d_model
        self.weight = nn.Parameter(torch.empty(c, p, p, d, dtype=dtype))
        nn.init.xavier_uniform_(self.weight.view(c * p * p, d))
        self.bias = nn.Parameter(torch.zeros(d, dtype=dtype))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D), patches in row-major order over the grid."""
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(b, (h // p) * (w // p), c * p * p)  # (B, N, C*P*P)
        return x @ self.weight.reshape(c * p * p, -1) + self.bias[None, None]  # (B, N, D)


class TokenEmbeddings(nn.Module):
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

    def __init__(self, cfg: EncoderConfig, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.token = _embedding(cfg.vocab_size, cfg, dtype)
        self.position = _embedding(cfg.max_len, cfg, dtype) if cfg.positional == "learned" else None
        if cfg.positional == "sinusoidal":
            table = sinusoidal(cfg.max_len, cfg.embed_width)  # (max_len, E), float64
            table = torch.from_numpy(table).to(dtype or torch.get_default_dtype())
            self.register_buffer("sinusoid", table, persistent=False)
        self.token_type = (
            _embedding(cfg.type_vocab_size, cfg, dtype) if cfg.type_vocab_size else None
        )
        self.norm = layer_norm(cfg, dtype, width=cfg.embed_width) if cfg.embed_norm else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.project = linear(cfg.embed_dim, cfg.d_model, dtype=dtype) if cfg.embed_dim else None

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, T) positions 0..T-1, or (B, T) RoBERTa's (with ``position_pad_id``): real
        tokens count from pad + 1, pads sit at pad.

        RoBERTa's are computed from the ids, as transformers does (not from the attention
        mask), so that left padding and pads inside a sequence give the same positions.
        """
        pad = self.config.position_pad_id
        if pad is None:
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, T)
        real = (input_ids != pad).long()  # (B, T)
        return torch.cumsum(real, dim=1) * real + pad

    def positions(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B|1, T) positions of a call: ``position_ids`` checked (integer (B, T) or (1, T),
        in [0, max_len) for a learned table, else >= 0) and on the model's device, or :meth:`position_ids`' default."""
        if position_ids is None:
            return self.position_ids(input_ids)
        check_position_ids(self.config, _values(position_ids), *input_ids.shape)
        return _index(position_ids, input_ids.device)

    def position_vectors(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(B|1, T) positions -> (B|1, T, E) position vectors (learned, or the sinusoid)."""
        if self.position is not None:
            return self.position(position_ids)
        table = self.sinusoid
        if position_ids.shape[-1] > table.shape[0]:  # the sinusoid extends past max_len
            table = torch.from_numpy(sinusoidal(position_ids.shape[-1], self.config.embed_width))
            table = table.to(device=self.sinusoid.device, dtype=self.sinusoid.dtype)
        return table[position_ids]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        device = self.token.weight.device
        input_ids = _index(input_ids, device)
        x = self.token(input_ids)  # (B, T, E)
        if self.config.positional != "rope":  # RoPE rotates q and k in the layers instead
            x = x + self.position_vectors(self.positions(input_ids, position_ids))  # + (B|1, T, E)
        if self.token_type is not None:
            if token_type_ids is None:
                types = torch.zeros_like(input_ids)
            else:
                types = _index(token_type_ids, device)
            x = x + self.token_type(types)
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        if self.project is not None:
            x = self.project(x)  # (B, T, E) -> (B, T, D)
        if attention_mask is None:
            return x, None
        return x, torch.as_tensor(attention_mask, device=device).bool()  # (B, T)


class PatchEmbeddings(nn.Module):
    """A ViT's front end: (B, C, H, W) -> (B, 1 + N, D): the class token, then one token per
    patch (:class:`PatchProjection`), plus learned positions over all 1 + N, then dropout
    (no LayerNorm, as ViT). No padding: the key padding mask is None.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.patch = PatchProjection(cfg, dtype=dtype)
        self.class_token = _class_token(cfg, dtype)
        self.position = _embedding(cfg.max_len, cfg, dtype)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """pixel_values (B, C, H, W) -> ``(x (B, 1 + N, D), None)``. Checks the arguments
        (``shared.inputs``): the token arguments and ``position_ids`` are an error here."""
        if position_ids is not None:
            raise ValueError(
                "position_ids are for text models; a ViT's positions are its patches "
                "(expected position_ids=None)"
            )
        if pixel_values is not None:
            pixel_values = torch.as_tensor(pixel_values)
        given = (input_ids, attention_mask, token_type_ids)
        check_pixels(self.config, _values(pixel_values), **_given(given))
        weight = self.patch.weight
        x = self.patch(pixel_values.to(device=weight.device, dtype=weight.dtype))  # (B, N, D)
        cls = self.class_token[None].expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        x = x + self.position.weight[None]  # (B, 1 + N, D) + (1, 1 + N, D)
        return self.dropout(x), None


class FeedForward(nn.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to each position alike; with
    ``gated_ffn`` a GLU (Shazeer 2020): (act(x W_gate + b_gate) * (x W_1 + b_1)) W_2 + b_2
    (GeGLU with gelu, SwiGLU with silu). Biases as ``mlp_bias`` / ``mlp_out_bias`` say."""

    def __init__(self, cfg: EncoderConfig, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.activation = cfg.activation
        d, f, bias = cfg.d_model, cfg.d_ff, cfg.mlp_bias
        self.gate_proj = linear(d, f, dtype=dtype, bias=bias) if cfg.gated_ffn else None
        self.in_proj = linear(d, f, dtype=dtype, bias=bias)
        self.out_proj = linear(f, d, dtype=dtype, bias=cfg.mlp_out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each wrapped in dropout, a residual and a LayerNorm.

    Post-norm (the paper): x = LN(x + Dropout(Sublayer(x))).
    Pre-norm (``norm_first``): x = x + Dropout(Sublayer(LN(x))).
    Dropout sits where the paper puts it: on each sub-layer's output. (PyTorch's
    ``nn.TransformerEncoderLayer`` also drops attention weights and FFN activations.)
    ``remat="attention"`` recomputes the attention sub-block in the backward
    (``torch.utils.checkpoint``); the stack handles ``"block"``.

    Layer ``index`` reads its own parts of the config: its window (``cfg.layer_window``), its
    RoPE base (``cfg.layer_rope_theta``; the table ``inv_freq`` is a constant, not a
    parameter), and, for ModernBERT's layer 0 (``first_attn_norm=False``), no norm1.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype: torch.dtype | None = None,
        remat: str = "none",
        index: int = 0,
    ) -> None:
        super().__init__()
        self.remat = check_remat(remat)
        self.norm_first = cfg.norm_first
        self.window = cfg.layer_window(index)
        self.attention = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, **attention_options(cfg), backend=backend, dtype=dtype
        )
        if cfg.positional == "rope":
            inv_freq = rope_inverse_frequencies(cfg.head_dim, cfg.layer_rope_theta(index))
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            self.register_buffer("inv_freq", torch.from_numpy(inv_freq).to(acc), persistent=False)
        else:
            self.inv_freq = None
        skip = index == 0 and not cfg.first_attn_norm
        self.norm1 = None if skip else layer_norm(cfg, dtype)
        self.ffn = FeedForward(cfg, dtype=dtype)
        self.norm2 = layer_norm(cfg, dtype)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        positions: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) -> ``(x (B, T, D), attention weights (B, H, T, T) or None)``.

        ``mask`` (general), ``key_padding_mask`` (B, T) and ``is_causal`` go to the attention
        as they are (``MultiHeadAttention`` documents them), with the layer's window;
        ``positions`` (B|1, T) rotate q and k when the config has RoPE.
        """
        masks = {"mask": mask, "key_padding_mask": key_padding_mask, "is_causal": is_causal}
        masks["window"] = self.window
        masks["rope"] = None if self.inv_freq is None else (positions, self.inv_freq)
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
            attention = _checkpointed(attention, reentrant=attention.backend == "flash")
        if return_attention:
            return attention(x, **masks, return_attention=True)
        return attention(x, **masks), None


class Encoder(nn.Module):
    """N encoder layers, then a final LayerNorm if ``final_norm`` (pre-norm models need one).

    ``remat`` (one of ``shared.backends.REMATS``): ``"block"`` recomputes each layer in the
    backward, keeping only its input; ``"attention"`` recomputes each attention sub-block.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype: torch.dtype | None = None,
        remat: str = "none",
    ) -> None:
        super().__init__()
        self.remat = check_remat(remat)
        self.layers = nn.ModuleList(
            [
                EncoderLayer(cfg, backend=backend, dtype=dtype, remat=remat, index=i)
                for i in range(cfg.n_layers)
            ]
        )
        self.final_norm = layer_norm(cfg, dtype) if cfg.final_norm else None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        positions: torch.Tensor | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """x (B, T, D) -> ``(x, attentions or None, hidden_states or None)``; ``positions``
        (B|1, T) are the RoPE positions (with ``positional="rope"``).

        ``hidden_states`` holds N + 1 tensors: the input, then each layer's output (before
        the final norm); ``attentions`` holds each layer's (B, H, T, T) weights.
        """
        attentions = [] if return_attention else None
        hidden_states = [x] if return_hidden_states else None
        for layer in self.layers:
            if self.remat == "block":
                layer = _checkpointed(layer, reentrant=_reentrant(layer))
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


class TransformerEncoder(nn.Module):
    """Embeddings, then the encoder stack. Starts in train mode, as every PyTorch module.

    The front end is chosen once, here: :class:`TokenEmbeddings` for a text model,
    :class:`PatchEmbeddings` for a ViT (``image_size``); each checks its own arguments and
    returns ``(x, key_padding_mask)``, and one forward runs the rest.

    Args:
        cfg: the model's hyperparameters.
        backend: one of ``shared.backends.BACKENDS``: ``"math"`` (explicit attention), ``"fused"``
            (PyTorch's SDPA kernel) or ``"flash"`` (FlashAttention-2, ``torch_impl/flash.py``).
        dtype: parameter dtype (default float32), e.g. ``torch.float64`` or ``torch.bfloat16``.
            Prefer it to ``.to(dtype)``: the sinusoid table is then rounded once, from float64.
        remat: activation checkpointing, one of ``shared.backends.REMATS``: ``"none"``,
            ``"block"`` (recompute each encoder layer in the backward) or ``"attention"``
            (recompute each attention sub-block). Gradients are unchanged; ValueError
            naming the choices for any other value.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        *,
        backend: str = "math",
        dtype: torch.dtype | None = None,
        remat: str = "none",
    ) -> None:
        super().__init__()
        dtype = as_dtype(dtype)  # a name, as jax_impl takes it, or a torch.dtype
        self.config = cfg
        embeddings = PatchEmbeddings if cfg.image_size else TokenEmbeddings
        self.embeddings = embeddings(cfg, dtype=dtype)
        self.encoder = Encoder(cfg, backend=backend, dtype=dtype, remat=remat)
        self.context_parallel = None  # parallelize sets it on a seq axis > 1 (global positions)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
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
        if self.context_parallel is not None and position_ids is None:  # this rank's rows
            position_ids = self.context_parallel.position_ids(self.config, input_ids)
        x, key_padding_mask = self.embeddings(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            position_ids=position_ids,
        )  # (B, T, D), (B, T) or None
        positions = None
        if self.config.positional == "rope":  # (B|1, T): they rotate q and k in each layer
            positions = self.embeddings.positions(_index(input_ids, x.device), position_ids)
        if mask is not None:
            mask = torch.as_tensor(mask, device=x.device)
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


def _reentrant(layer: EncoderLayer) -> bool:
    """Whether a checkpointed ``layer`` takes the reentrant form (:func:`_checkpointed`): when
    its attention is flash and it draws no dropout. With dropout drawn, the reentrant form
    inside a compiled step replays other masks than its forward drew (its forward runs
    under ``no_grad``, another compiled graph): wrong gradients, silently. The
    non-reentrant form is kept then: right eagerly and with the backward outside the
    compiled step, a ``CheckpointError`` with the backward inside it (pinned by
    ``test_remat.py``)."""
    drops = layer.training and layer.dropout.p > 0
    return layer.attention.backend == "flash" and not drops


def _checkpointed(module, *, reentrant: bool = False):
    """``module``'s call, recomputed in the backward instead of keeping its activations
    (``torch.utils.checkpoint``; dropout replays the same mask).

    Non-reentrant unless ``reentrant``: the encoder asks for the reentrant form for a block
    (layer or attention) whose attention runs our flash function, a deliberate graph break
    under ``torch.compile``, and that draws no dropout (:func:`_reentrant`; the attention
    block has none). Around a graph break the non-reentrant form wraps the compiled pieces
    of the layer, whose backward unpacks a saved tensor twice when the backward runs inside
    the compiled step (``CheckpointError: Unpack is being triggered for a tensor that was
    already unpacked once``); the reentrant form recomputes the layer under its own autograd
    graph and saves nothing through hooks. Keyword arguments (masks, flags, positions) are
    bound to the call: the reentrant form takes positional inputs only."""

    def call(*args, **kwargs):
        if reentrant:
            bound = functools.partial(module, **kwargs)
            return checkpoint(bound, *args, use_reentrant=True)
        return checkpoint(module, *args, use_reentrant=False, **kwargs)

    return call


def pack_outputs(x, attentions, hidden_states):
    """``x``, or the tuple of ``x`` and whichever of the two lists was asked for (not None)."""
    outputs = (x, *(o for o in (attentions, hidden_states) if o is not None))
    return outputs[0] if len(outputs) == 1 else outputs


def _given(arguments) -> dict[str, bool]:
    """Which token arguments a call gave, for ``check_pixels``."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: a is not None for name, a in zip(names, arguments, strict=True)}


Embeddings = TokenEmbeddings  # the name before the ViT front end became its own module


def _index(x, device: torch.device) -> torch.Tensor:
    """An integer argument (any integer dtype, values already checked) as
    ``shared.inputs.INDEX_DTYPE``, int32, on ``device``: the same dtype in both frameworks."""
    return torch.as_tensor(x, device=device).to(torch.int32)


def _values(x) -> np.ndarray | Spec | None:
    """What validation may read of an argument: its values only when they are on the host.

    Shapes and dtypes are always checked. Values (id ranges, 0/1 masks) are checked only for
    host arrays: NumPy arrays, lists and CPU tensors. A CUDA tensor or a DTensor gives only
    its shape and kind, so a call never waits on the device or gathers a sharded input onto
    one host; neither does a call while ``torch.compile`` traces.
    """
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    if torch.compiler.is_compiling() or isinstance(x, DTensor) or x.device.type != "cpu":
        return Spec(tuple(x.shape), dtype_kind(x))
    return x.detach().numpy()
