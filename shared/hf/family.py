"""What a Hugging Face family is, in this project's terms, and the helpers its module uses.

A family module (``bert.py``, ``gpt2.py`` ...) defines one :class:`Family`: the
``model_type`` values it reads, the name prefix of its body inside task models, the tensors
it skips, the mapping of ``config.json`` to :class:`EncoderConfig` and back, and the table of
its tensor names in the vocabulary of ``shared/layouts.py``. NumPy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from shared.config import EncoderConfig
from shared.layouts import Row

__all__ = [
    "ACTIVATIONS",
    "EXPORTED_ACTIVATIONS",
    "Family",
    "activation",
    "check_rope_scaling",
    "linear",
    "refuse",
    "require",
    "rope_block",
    "rope_theta",
    "sizes",
]

# config.json activation -> EncoderConfig.activation. gelu_new (HF's written-out tanh
# formula) is our gelu_tanh: they differ by at most 2.4e-7 (README, "Hugging Face families").
ACTIVATIONS = {
    "gelu": "gelu",  # exact: x * Phi(x)
    "gelu_new": "gelu_tanh",  # the tanh approximation, written out (GPT-2's default)
    "gelu_pytorch_tanh": "gelu_tanh",  # the same, through F.gelu(approximate="tanh")
    "relu": "relu",
    "silu": "silu",  # x * sigmoid(x): SwiGLU's gate (Llama, Qwen3, EuroBERT, NomicBERT)
    "swish": "silu",  # transformers' other name for it
}
# EncoderConfig.activation -> what an exported config.json says (exactly what we compute)
EXPORTED_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "silu": "silu",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face model family: everything that differs from one to the next."""

    name: str  # for messages: "BERT"
    model_types: tuple[str, ...]  # config.json "model_type" values read
    architecture: str  # written to config.json "architectures" on export
    prefix: str  # the body's name prefix inside task models: "bert."
    skipped: tuple[str, ...]  # fnmatch patterns (after the prefix) of tensors that are not the body
    config: Callable[[dict[str, Any]], EncoderConfig]  # config.json -> EncoderConfig
    export_config: Callable[[EncoderConfig], dict[str, Any]]  # EncoderConfig -> config.json
    table: Callable[[EncoderConfig], list[Row]]  # (HF name, format names, layout)


def require(data: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise unless ``config.json`` has every key."""
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"missing field(s) {missing}")


def sizes(data: dict[str, Any], mapping: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``{EncoderConfig field: config.json value}`` for the ``(json key, field)`` pairs."""
    require(data, tuple(key for key, _ in mapping))
    return {ours: data[key] for key, ours in mapping}


def activation(data: dict[str, Any], key: str) -> str:
    """config.json's activation name -> ours, or a ValueError naming the supported ones."""
    name = data[key]
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{key} is {name!r}; supported: {sorted(ACTIVATIONS)} "
            "(exact GELU, its tanh approximation, ReLU, SiLU)"
        )
    return ACTIVATIONS[name]


def refuse(cfg: EncoderConfig, family: str, **needed: Any) -> None:
    """Raise unless every ``field=value`` holds: what a family cannot express, by name."""
    for field, value in needed.items():
        got = getattr(cfg, field)
        if got != value:
            raise ValueError(
                f"{family} cannot express {field}={got!r}: a {family} config needs "
                f"{field}={value!r}"
            )


def linear(outside: str, ours: str, bias: bool) -> tuple[Row, ...]:
    """The rows of one ``nn.Linear`` (weight (out, in), transposed) and its bias if any."""
    rows: tuple[Row, ...] = ((f"{outside}.weight", (f"{ours}.weight",), "transpose"),)
    return rows + (((f"{outside}.bias", (f"{ours}.bias",), "copy"),) if bias else ())


def rope_theta(params: Any, what: str = "rope_parameters") -> float:
    """The RoPE base of a config.json rope block ``{"rope_type": ..., "rope_theta": ...}``.

    Only unscaled RoPE is read: any other ``rope_type`` (linear, dynamic, yarn, longrope,
    llama3 ...) rescales the frequencies, which this encoder does not compute, and is
    refused by name.
    """
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise ValueError(f"{what} must be a dict with 'rope_theta', got {params!r}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"{what} has rope_type {kind!r}; only 'default' (unscaled RoPE) is supported: "
            f"{kind!r} rescales the rotary frequencies, which changes the math"
        )
    return float(params["rope_theta"])


def check_rope_scaling(data: dict[str, Any]) -> None:
    """Refuse a config.json whose older ``rope_scaling`` key names a scaled RoPE.

    transformers 5 reads ``rope_scaling`` into ``rope_parameters`` even when the file has
    both, so a scaling there changes the math whatever ``rope_parameters`` says.
    """
    scaling = data.get("rope_scaling")
    if scaling is not None:
        rope_theta(
            scaling | {"rope_theta": 0.0} if isinstance(scaling, dict) else scaling, "rope_scaling"
        )


def rope_block(data: dict[str, Any], default_theta: float) -> dict[str, Any]:
    """config.json's rope block: ``rope_parameters`` (transformers 5), else the older
    top-level ``rope_theta``; a scaled ``rope_scaling`` is refused in either case."""
    check_rope_scaling(data)
    if data.get("rope_parameters") is not None:
        return data["rope_parameters"]
    return {"rope_type": "default", "rope_theta": data.get("rope_theta", default_theta)}
