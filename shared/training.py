"""What both training loops share (NumPy only): hyperparameters, the schedule, the decay rule,
and the names of the task heads' weights.

Each rule is written once here and used by ``torch_impl/train.py`` and ``jax_impl/train.py``,
so the two cannot drift apart:

* :func:`lr_factor`: linear warmup, then linear decay, indexed by the number of optimizer
  updates already made (0 for the first update). ``torch.optim.lr_scheduler.LambdaLR``
  (stepped after ``optimizer.step()``) and an optax schedule (called with the optimizer's
  own update count, starting at 0) both evaluate it at that index, so update k uses
  ``lr_factor(k)`` in both.
* :func:`decays`: which parameters get weight decay (matrices and embedding tables; not
  biases nor LayerNorm parameters).
* :func:`is_frozen`: which parameters are not trained (the attention key bias, whose
  gradient is zero in exact arithmetic).
* ``head.*``: the task head's weights, an extension of format v1 (see :func:`head_shapes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HEAD_PREFIX",
    "POOLINGS",
    "TrainConfig",
    "decays",
    "head_shapes",
    "is_frozen",
    "lr_factor",
    "split_head",
    "validate_head",
]

POOLINGS = ("first", "mean")
HEAD_PREFIX = "head."


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and batching. Both frameworks read the same instance.

    ``weight_decay``, ``b1``, ``b2`` and ``eps`` are passed explicitly to both optimizers:
    their defaults differ (``torch.optim.AdamW`` decays by 1e-2, ``optax.adamw`` by 1e-4).
    """

    learning_rate: float = 1e-3  # peak, reached at the end of warmup
    warmup_steps: int = 100  # updates 0 .. warmup_steps-1 ramp up to the peak
    total_steps: int = 1000  # then linear decay, reaching 0 at update total_steps
    batch_size: int = 32  # sequences per micro-batch
    accumulation_steps: int = 1  # micro-batches per optimizer update
    max_grad_norm: float = 1.0  # global-norm clipping, as torch.nn.utils.clip_grad_norm_
    weight_decay: float = 0.01  # decoupled (AdamW), on matrices and embeddings only
    b1: float = 0.9  # Adam's first-moment decay
    b2: float = 0.999  # Adam's second-moment decay
    eps: float = 1e-8  # added to sqrt(v) in Adam's denominator
    freeze_key_bias: bool = True  # its gradient is 0 but for rounding noise: see is_frozen

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "total_steps", "batch_size", "accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}={value!r} must be an int")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps={self.total_steps} must exceed warmup_steps={self.warmup_steps}"
            )
        if self.batch_size < 1 or self.accumulation_steps < 1:
            raise ValueError(
                f"batch_size={self.batch_size} and accumulation_steps="
                f"{self.accumulation_steps} must be >= 1"
            )
        if not self.learning_rate > 0 or not self.max_grad_norm > 0:
            raise ValueError(
                f"learning_rate={self.learning_rate} and max_grad_norm={self.max_grad_norm} "
                "must be > 0"
            )
        if self.weight_decay < 0 or not 0 <= self.b1 < 1 or not 0 <= self.b2 < 1:
            raise ValueError(
                f"need weight_decay >= 0 and b1, b2 in [0, 1), got weight_decay="
                f"{self.weight_decay}, b1={self.b1}, b2={self.b2}"
            )
        if not self.eps > 0:
            raise ValueError(f"eps={self.eps} must be > 0")


def lr_factor(step: Any, *, warmup_steps: int, total_steps: int, xp: Any = np) -> Any:
    """Multiplier of the peak learning rate for update number ``step`` (0 = the first update).

    Warmup: ``(step + 1) / warmup_steps``, so the first update already moves (a schedule
    that starts at 0 wastes it). Decay: ``(total_steps - step) / (total_steps - warmup_steps)``,
    1 at the end of warmup and 0 at ``total_steps``. ``xp`` is ``numpy`` for a Python int
    (PyTorch's ``LambdaLR``) or ``jax.numpy`` for a traced step count (optax).

    With ``warmup_steps=4, total_steps=10``: 0.25, 0.5, 0.75, 1, 1, 5/6, 4/6, 3/6, 2/6, 1/6.
    """
    warm = (step + 1) / max(warmup_steps, 1)
    decay = (total_steps - step) / (total_steps - warmup_steps)
    return xp.clip(xp.minimum(warm, decay), 0.0, 1.0)


def decays(shape: tuple[int, ...]) -> bool:
    """Weight decay applies to matrices and embedding tables (ndim >= 2), not to vectors.

    Biases and LayerNorm scales and offsets are vectors: decaying a LayerNorm scale towards
    0 fights the normalisation, and biases do not add capacity that needs regularising.
    """
    return len(shape) >= 2


def is_frozen(path: str, train: TrainConfig) -> bool:
    """Whether the parameter at ``path`` stays fixed in training.

    ``path`` is the parameter's attribute path, the same in both implementations
    (``encoder.encoder.layers.0.attention.k.bias``: PyTorch's ``named_parameters()`` names;
    in JAX, the ``nnx.state`` path joined with dots).

    The key projection's bias ``b`` adds ``q . b`` to every score of a query row, a constant
    that softmax removes, so its gradient is exactly 0 in exact arithmetic. In float32 it is
    rounding noise (~1e-10), and Adam rescales noise into steps of about the learning rate
    (``m / sqrt(v)``): each framework would random-walk the bias its own way, and the two
    copies end up differing by as much as the bias itself (measured: 1.4e-3 after 200 steps,
    while every other tensor agreed within 1e-5). In exact arithmetic the bias never moves
    (a zero gradient, and vectors get no weight decay), so holding it fixed follows the
    exact trajectory; ``freeze_key_bias=False`` trains it anyway.
    """
    return train.freeze_key_bias and path.endswith("attention.k.bias")


def head_shapes(d_model: int, n_classes: int) -> dict[str, tuple[int, ...]]:
    """The task head's tensors, named as an extension of format v1 (linear weights (in, out)).

    A task model's weight map is the encoder's format-v1 map plus these ``head.*`` entries.
    They never go into a format-v1 file (its loader is strict and rejects unknown keys):
    :func:`split_head` separates them, so the encoder part can be saved with
    ``shared.weights.save_file`` and the head kept alongside.
    """
    return {"head.weight": (d_model, n_classes), "head.bias": (n_classes,)}


def split_head(
    weights: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(encoder weights in format v1, head.* weights)`` from a task model's weight map."""
    encoder = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    head = {k: v for k, v in weights.items() if k.startswith(HEAD_PREFIX)}
    return encoder, head


def validate_head(head: dict[str, np.ndarray], d_model: int, n_classes: int) -> None:
    """Raise ``ValueError`` unless ``head`` holds exactly the head tensors, shaped as expected."""
    expected = head_shapes(d_model, n_classes)
    if sorted(head) != sorted(expected):
        raise ValueError(f"head tensors must be {sorted(expected)}, got {sorted(head)}")
    for name, shape in expected.items():
        found = tuple(np.shape(head[name]))
        if found != shape:
            raise ValueError(f"tensor {name!r}: expected shape {shape}, found {found}")
