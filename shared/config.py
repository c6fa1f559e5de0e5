"""EncoderConfig: the one description of a model that both implementations build from."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["ACTIVATIONS", "POSITIONAL_KINDS", "EncoderConfig", "format_of_field"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
POSITIONAL_KINDS = ("sinusoidal", "learned")


def _since_format_2(default: Any) -> Any:
    """A field that checkpoint format 1 does not know; ``default`` means "not used"
    (``shared.weights`` writes format 2 only when such a field differs from it)."""
    return dataclasses.field(default=default, metadata={"format": 2})


def format_of_field(field: dataclasses.Field) -> int:
    """The checkpoint format that introduced a config field: 1, or 2 (``_since_format_2``)."""
    return field.metadata.get("format", 1)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a Transformer encoder. Frozen and validated on construction.

    Defaults give a small model that trains in seconds on a CPU; the paper's base model is
    ``d_model=512, n_heads=8, d_ff=2048, n_layers=6, dropout=0.1``.
    """

    vocab_size: int = 1000  # token embedding rows; ids must lie in [0, vocab_size)
    d_model: int = 64  # width of the residual stream (D)
    n_heads: int = 4  # attention heads (H); head_dim = d_model // n_heads
    d_ff: int = 256  # hidden width of the feed-forward block (F); the paper uses 4 * D
    n_layers: int = 2  # encoder layers in the stack (N)
    max_len: int = 128  # positions: table size (learned) or precomputed rows (sinusoidal)
    dropout: float = 0.1  # on embeddings and on each sub-layer output, as in the paper
    activation: str = "gelu"  # "relu", "gelu" (exact erf) or "gelu_tanh" (tanh approximation)
    norm_first: bool = False  # False: post-norm (the paper, BERT); True: pre-norm (GPT-2 style)
    layer_norm_eps: float = 1e-5  # PyTorch's default; Flax's nnx.LayerNorm defaults to 1e-6
    positional: str = "sinusoidal"  # "sinusoidal" (the paper) or "learned" (BERT)
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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        for name in ("norm_first", "embed_norm", "final_norm", "causal"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be a bool")
        if self.d_model % self.n_heads != 0:
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
        """Width of one attention head (hd)."""
        return self.d_model // self.n_heads

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an int")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
