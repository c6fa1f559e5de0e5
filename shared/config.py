"""EncoderConfig: the one description of a model that both implementations build from."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = [
    "ACTIVATIONS",
    "LAYER_TYPES",
    "MODERNBERT_BASE",
    "NORMS",
    "POSITIONAL_KINDS",
    "SECTIONS",
    "EncoderConfig",
    "format_of_field",
]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
POSITIONAL_KINDS = ("sinusoidal", "learned", "rope")
NORMS = ("layer_norm", "rms_norm")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names, per layer


def _since_format_2(default: Any) -> Any:
    """A field that checkpoint format 1 does not know; ``default`` means "not used"
    (``shared.weights`` writes format 2 only when such a field differs from it)."""
    return dataclasses.field(default=default, metadata={"format": 2})


def _since_format_3(default: Any) -> Any:
    """A field that checkpoint formats 1 and 2 do not know (the parts of encoders from 2021
    on); ``shared.weights`` writes format 3 only when such a field differs from ``default``."""
    return dataclasses.field(default=default, metadata={"format": 3})


def format_of_field(field: dataclasses.Field) -> int:
    """The checkpoint format that introduced a config field: 1, 2 (``_since_format_2``) or 3
    (``_since_format_3``)."""
    return field.metadata.get("format", 1)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a Transformer encoder. Frozen and validated on construction.

    Defaults give a small model that trains in seconds on a CPU; the paper's base model is
    ``d_model=512, n_heads=8, d_ff=2048, n_layers=6, dropout=0.1``. One flat dataclass in
    sections (:data:`SECTIONS`); ``print(cfg)`` lists the fields section by section, so a
    config's component choices read at a glance. Invalid values raise ``ValueError``
    naming the field, what was expected and what was got.
    """

    vocab_size: int = 1000  # token embedding rows; ids must lie in [0, vocab_size)
    d_model: int = 64  # width of the residual stream (D)
    n_heads: int = 4  # attention heads (H); head_dim = d_model // n_heads
    d_ff: int = 256  # hidden width of the feed-forward block (F); the paper uses 4 * D
    n_layers: int = 2  # encoder layers in the stack (N)
    max_len: int = 128  # positions: table size (learned) or precomputed rows (sinusoidal)
    dropout: float = 0.1  # on embeddings and on each sub-layer output, as in the paper
    activation: str = "gelu"  # "relu", "gelu" (exact erf), "gelu_tanh" (tanh approx.), "silu"
    norm_first: bool = False  # False: post-norm (the paper, BERT); True: pre-norm (GPT-2 style)
    layer_norm_eps: float = 1e-5  # PyTorch's default; Flax's nnx.LayerNorm defaults to 1e-6
    positional: str = "sinusoidal"  # "sinusoidal" (the paper), "learned" (BERT), "rope" (below)
    type_vocab_size: int = 0  # token-type (segment) embedding rows; 0 = no token types
    embed_norm: bool = False  # LayerNorm after the embedding sum, as in BERT
    final_norm: bool = False  # LayerNorm after the last layer, as pre-norm models need
    # Added with checkpoint format 2, each for a family of pretrained checkpoints:
    # every call is causal, as GPT-2 (is_causal=True still works alone)
    causal: bool = _since_format_2(False)
    # RoBERTa: positions from input_ids, pads at this id
    position_pad_id: int | None = _since_format_2(None)
    # ELECTRA: embedding width E, projected to d_model; 0 = d_model, none
    embed_dim: int = _since_format_2(0)
    # ViT: square images this many pixels wide; 0 = text (input_ids)
    image_size: int = _since_format_2(0)
    # ViT: square patches, each one token (image_size % patch_size == 0)
    patch_size: int = _since_format_2(16)
    # ViT: colour channels of pixel_values (B, C, H, W)
    num_channels: int = _since_format_2(3)
    # Added with checkpoint format 3, the parts of encoders from 2021 on. Attention:
    # GQA (Ainslie et al. 2023): K/V heads, dividing n_heads; 0 = n_heads
    n_kv_heads: int = _since_format_3(0)
    # head width when not d_model / n_heads (Qwen3); 0 = d_model // n_heads
    attn_head_dim: int = _since_format_3(0)
    # biases on q, k, v and out (False: Llama, ModernBERT ...)
    attention_bias: bool = _since_format_3(True)
    # Qwen3: RMSNorm over head_dim on q and k, before RoPE
    qk_norm: bool = _since_format_3(False)
    # local layers: query i sees keys |i - j| <= window (ModernBERT: local_attention // 2)
    sliding_window: int | None = _since_format_3(None)
    # per layer, one of LAYER_TYPES; None = every layer full (or sliding, with a window)
    layer_types: tuple[str, ...] | None = _since_format_3(None)
    # Rotary positions (Su et al. 2021, RoFormer), with positional="rope": the base of
    # full-attention layers, of sliding layers (None = rope_theta), and the pairing
    rope_theta: float = _since_format_3(10000.0)
    rope_local_theta: float | None = _since_format_3(None)
    # pairs (2i, 2i+1) (RoFormer, GPT-J) instead of transformers' (i, i + hd/2)
    rope_interleaved: bool = _since_format_3(False)
    # Feed-forward: GLU (Shazeer 2020), out(act(x W_gate) * x W_in): GeGLU, SwiGLU
    gated_ffn: bool = _since_format_3(False)
    # biases on the feed-forward's input (and gate) linears, and on its output linear
    # (GTE keeps the output one only)
    mlp_bias: bool = _since_format_3(True)
    mlp_out_bias: bool = _since_format_3(True)
    # Norms: "layer_norm" or "rms_norm" (Zhang & Sennrich 2019, Llama), eps layer_norm_eps
    norm: str = _since_format_3("layer_norm")
    # LayerNorm bias (False: ModernBERT); rms_norm needs False
    norm_bias: bool = _since_format_3(True)
    # False: layer 0 has no norm before attention (ModernBERT: the embeddings are normed)
    first_attn_norm: bool = _since_format_3(True)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        for name in BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be a bool")
        _check_int("attn_head_dim", self.attn_head_dim, minimum=0)
        if not self.attn_head_dim and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        _check_float("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1)")
        _check_float("layer_norm_eps", self.layer_norm_eps)
        if not self.layer_norm_eps > 0.0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} must be > 0")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(f"positional={self.positional!r} must be one of {POSITIONAL_KINDS}")
        self._check_format2_fields()
        self._check_format3_fields()

    def _check_format2_fields(self) -> None:
        if self.position_pad_id is not None:
            _check_int("position_pad_id", self.position_pad_id, minimum=0)
            if self.positional != "learned":
                raise ValueError(
                    f"position_pad_id={self.position_pad_id} needs positional='learned', "
                    f"got {self.positional!r}"
                )
            if self.position_pad_id + 2 > self.max_len:
                raise ValueError(
                    f"position_pad_id={self.position_pad_id} needs max_len >= "
                    f"position_pad_id + 2 = {self.position_pad_id + 2} (real tokens start at "
                    f"position_pad_id + 1), got max_len={self.max_len}"
                )
        self._check_image_fields()
        _check_int("embed_dim", self.embed_dim, minimum=0)
        if self.embed_dim == self.d_model:
            raise ValueError(
                f"embed_dim={self.embed_dim} equals d_model: use embed_dim=0 (no projection)"
            )

    def _check_image_fields(self) -> None:
        _check_int("image_size", self.image_size, minimum=0)
        _check_int("patch_size", self.patch_size, minimum=1)
        _check_int("num_channels", self.num_channels, minimum=1)
        if not self.image_size:
            return
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.max_len != self.n_patches + 1:
            raise ValueError(
                f"max_len={self.max_len} must be n_patches + 1 = {self.n_patches + 1} for "
                f"image_size={self.image_size}, patch_size={self.patch_size} (one position "
                "per patch and one for the class token)"
            )
        for name, text_only in (
            ("positional", "learned"),
            ("type_vocab_size", 0),
            ("position_pad_id", None),
            ("embed_dim", 0),
        ):
            if getattr(self, name) != text_only:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} with image_size={self.image_size}: a ViT "
                    f"needs {name}={text_only!r}"
                )

    def _check_format3_fields(self) -> None:
        _check_int("n_kv_heads", self.n_kv_heads, minimum=0)
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (each K/V "
                f"head serves n_heads / n_kv_heads query heads)"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} must be one of {NORMS}")
        if self.norm == "rms_norm" and self.norm_bias:
            raise ValueError("norm='rms_norm' has no bias: expected norm_bias=False, got True")
        if not self.first_attn_norm and not self.norm_first:
            raise ValueError(
                "first_attn_norm=False needs norm_first=True (a pre-norm stack whose layer 0 "
                "reads the normalised embeddings), got norm_first=False"
            )
        self._check_rope_fields()
        self._check_window_fields()

    def _check_rope_fields(self) -> None:
        for name in ("rope_theta", "rope_local_theta"):
            value = getattr(self, name)
            if value is None and name == "rope_local_theta":
                continue
            _check_float(name, value)
            if not value > 1.0:
                raise ValueError(f"{name}={value!r} must be > 1 (a RoPE base, e.g. 10000)")
        if self.positional == "rope":
            if self.head_dim % 2:
                raise ValueError(
                    f"positional='rope' rotates pairs of features: head_dim must be even, got "
                    f"head_dim={self.head_dim}"
                )
            if self.image_size:
                raise ValueError("positional='rope' is for text; a ViT needs 'learned'")
        elif self.rope_local_theta is not None or self.rope_interleaved:
            raise ValueError(
                f"rope_local_theta / rope_interleaved need positional='rope', got "
                f"positional={self.positional!r}"
            )
        if self.qk_norm and self.positional != "rope":
            raise ValueError(f"qk_norm=True needs positional='rope', got {self.positional!r}")

    def _check_window_fields(self) -> None:
        if self.layer_types is not None:
            if not isinstance(self.layer_types, (list, tuple)):
                raise ValueError(
                    f"layer_types must be a sequence of {LAYER_TYPES}, got {self.layer_types!r}"
                )
            object.__setattr__(self, "layer_types", tuple(self.layer_types))  # JSON gives a list
            if len(self.layer_types) != self.n_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries, expected one per layer: "
                    f"n_layers={self.n_layers}"
                )
            bad = [t for t in self.layer_types if t not in LAYER_TYPES]
            if bad:
                raise ValueError(f"layer_types holds {bad[0]!r}; expected one of {LAYER_TYPES}")
        if self.sliding_window is not None:
            _check_int("sliding_window", self.sliding_window, minimum=1)
        elif "sliding_attention" in (self.layer_types or ()):
            raise ValueError(
                "layer_types has 'sliding_attention' layers but sliding_window is None; expected "
                "a window >= 1"
            )
        if self.rope_local_theta is not None and "sliding_attention" not in self.layer_kinds:
            raise ValueError("rope_local_theta is set but no layer is 'sliding_attention'")

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's attention: "full_attention", or "sliding_attention" (the window).

        ``layer_types`` when given; otherwise every layer is sliding if ``sliding_window`` is
        set (Mistral's convention), else full."""
        if self.layer_types is not None:
            return self.layer_types
        kind = "full_attention" if self.sliding_window is None else "sliding_attention"
        return (kind,) * self.n_layers

    def layer_window(self, i: int) -> int | None:
        """Layer i's window (keys |i - j| <= window; causal: i - window <= j <= i), or None."""
        return self.sliding_window if self.layer_kinds[i] == "sliding_attention" else None

    def layer_rope_theta(self, i: int) -> float:
        """Layer i's RoPE base: rope_local_theta on sliding layers when set, else rope_theta
        (ModernBERT: 160000 global, 10000 local)."""
        if self.layer_kinds[i] == "sliding_attention" and self.rope_local_theta is not None:
            return self.rope_local_theta
        return self.rope_theta

    @property
    def kv_heads(self) -> int:
        """K/V heads (n_kv_heads, or n_heads without grouping)."""
        return self.n_kv_heads or self.n_heads

    @property
    def n_patches(self) -> int:
        """Tokens of an image before the class token: (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def embed_width(self) -> int:
        """Width of the embedding tables and their LayerNorm (E): embed_dim, or d_model."""
        return self.embed_dim or self.d_model

    @property
    def head_dim(self) -> int:
        """Width of one attention head (hd): attn_head_dim, or d_model // n_heads."""
        return self.attn_head_dim or self.d_model // self.n_heads

    def __str__(self) -> str:
        """The fields section by section (:data:`SECTIONS`), one section per line."""
        lines = [
            f"  {section}: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            for section, names in SECTIONS.items()
        ]
        return "EncoderConfig(\n" + "\n".join(lines) + "\n)"

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["layer_types"] is not None:
            data["layer_types"] = list(data["layer_types"])  # JSON's type: to_dict round-trips
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from a dict; unknown keys are an error, missing keys take the defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data)


BOOL_FIELDS = (
    "norm_first",
    "embed_norm",
    "final_norm",
    "causal",
    "attention_bias",
    "qk_norm",
    "rope_interleaved",
    "gated_ffn",
    "mlp_bias",
    "mlp_out_bias",
    "norm_bias",
    "first_attn_norm",
)

# Every field, once, in the section that print(cfg) shows it under.
SECTIONS: dict[str, tuple[str, ...]] = {
    "sizes": ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"),
    "embeddings": (
        "positional",
        "type_vocab_size",
        "embed_norm",
        "position_pad_id",
        "embed_dim",
        "image_size",
        "patch_size",
        "num_channels",
    ),
    "attention": (
        "n_kv_heads",
        "attn_head_dim",
        "attention_bias",
        "qk_norm",
        "causal",
        "sliding_window",
        "layer_types",
    ),
    "rope": ("rope_theta", "rope_local_theta", "rope_interleaved"),
    "feed-forward": ("activation", "gated_ffn", "mlp_bias", "mlp_out_bias"),
    "norms": ("norm", "norm_bias", "norm_first", "first_attn_norm", "final_norm", "layer_norm_eps"),
    "training": ("dropout",),
}


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")


# ModernBERT-base's shape (answerdotai/ModernBERT-base, Warner et al. 2024): 22 layers,
# d_model 768, 12 heads, GeGLU of width 1152, global attention every third layer from
# layer 0 and a +-64 window (local_attention 128) in the others, RoPE bases 160000 (global)
# and 10000 (local), LayerNorms and linears without bias, no dropout.
MODERNBERT_BASE = EncoderConfig(
    vocab_size=50368,
    d_model=768,
    n_heads=12,
    d_ff=1152,
    n_layers=22,
    max_len=8192,
    dropout=0.0,
    activation="gelu",
    norm_first=True,
    positional="rope",
    embed_norm=True,
    final_norm=True,
    attention_bias=False,
    sliding_window=64,
    layer_types=tuple("full_attention" if i % 3 == 0 else "sliding_attention" for i in range(22)),
    rope_theta=160000.0,
    rope_local_theta=10000.0,
    gated_ffn=True,
    mlp_bias=False,
    mlp_out_bias=False,
    norm_bias=False,
    first_attn_norm=False,
)
