"""Training in PyTorch: task heads, AdamW with warmup and decay, clipping, accumulation.

Mirrors ``jax_impl/train.py`` function for function; what both share (the schedule, the
decay rule, the hyperparameters, the head's weight names) lives in ``shared/training.py``.

One optimizer update (:func:`train_step`):

1. for each micro-batch, add the gradient of ``loss_sum / n_targets``, where ``n_targets``
   counts the labels of *all* micro-batches: the update equals one on the concatenated batch;
2. clip the global gradient norm: ``g *= min(1, max_norm / (norm + 1e-6))``
   (``torch.nn.utils.clip_grad_norm_``; ``jax_impl`` writes the same formula out);
3. AdamW (decoupled weight decay on matrices and embeddings only);
4. advance the learning-rate schedule (``LambdaLR`` steps *after* the optimizer, so update k
   uses ``lr_factor(k)``, as optax does).

Notation: B batch, T sequence length, D d_model, C classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from shared.config import EncoderConfig
from shared.data import Batch, TaskConfig, count_targets
from shared.training import (
    POOLINGS,
    TrainConfig,
    decays,
    is_frozen,
    lr_factor,
    split_head,
    validate_head,
)
from torch_impl.attention import linear
from torch_impl.encoder import TransformerEncoder
from torch_impl.weights import export_weights, import_weights, to_numpy

__all__ = [
    "SequenceClassifier",
    "TokenTagger",
    "Trainer",
    "build_model",
    "clip_grad_norm",
    "cross_entropy",
    "evaluate",
    "export_task_weights",
    "import_task_weights",
    "loss_terms",
    "make_optimizer",
    "train_step",
    "trainable_parameters",
]


class SequenceClassifier(nn.Module):
    """The encoder, a pooling over positions, and a linear layer: logits (B, C) per sequence.

    ``pooling="first"``: the first position's output (BERT's [CLS] habit); ``"mean"``: the
    average over real tokens (padding excluded).
    """

    def __init__(self, cfg: EncoderConfig, n_classes: int, *, pooling: str = "first") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")
        self.pooling = pooling
        self.encoder = TransformerEncoder(cfg)
        self.head = linear(cfg.d_model, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask)  # (B, T, D)
        if self.pooling == "first":
            pooled = h[:, 0]  # (B, D)
        else:
            m = attention_mask.to(h.dtype)[:, :, None]  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1)  # (B, D)
        return self.head(pooled)  # (B, C)


class TokenTagger(nn.Module):
    """The encoder and a linear layer applied at every position: logits (B, T, C)."""

    def __init__(self, cfg: EncoderConfig, n_classes: int) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(cfg)
        self.head = linear(cfg.d_model, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))  # (B, T, C)


def build_model(
    cfg: EncoderConfig, task: TaskConfig, *, pooling: str = "first"
) -> SequenceClassifier | TokenTagger:
    """The task model for ``task`` (in train mode, as PyTorch modules start)."""
    if task.is_tagging:
        return TokenTagger(cfg, task.n_classes)
    return SequenceClassifier(cfg, task.n_classes, pooling=pooling)


def export_task_weights(model: SequenceClassifier | TokenTagger) -> dict[str, np.ndarray]:
    """The encoder's format-v1 weights plus ``head.weight`` (D, C) and ``head.bias`` (C,)."""
    weights = export_weights(model.encoder)  # copies, not views of the live parameters
    weights["head.weight"] = to_numpy(model.head.weight).T.copy()  # (in, out)
    weights["head.bias"] = to_numpy(model.head.bias).copy()
    return weights


def import_task_weights(
    model: SequenceClassifier | TokenTagger, weights: dict[str, np.ndarray]
) -> SequenceClassifier | TokenTagger:
    """Copy a task weight map (format v1 + ``head.*``) into ``model``. Strict, as format v1."""
    encoder, head = split_head(weights)
    validate_head(head, *head_shapes_of(model))
    import_weights(model.encoder, encoder)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(np.ascontiguousarray(head["head.weight"].T)))
        model.head.bias.copy_(torch.from_numpy(np.asarray(head["head.bias"])))
    return model


def head_shapes_of(model: SequenceClassifier | TokenTagger) -> tuple[int, int]:
    """(D, C) of the model's head."""
    return model.head.in_features, model.head.out_features


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[label], per example: logits (..., C), labels (...) -> (...)."""
    log_p = torch.log_softmax(logits, dim=-1)  # (..., C)
    return -log_p.gather(-1, labels.long()[..., None])[..., 0]  # gather wants int64 indices


def loss_terms(
    model: SequenceClassifier | TokenTagger, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed cross-entropy, number of correct predictions)`` over the batch's labels.

    Sums, not means: the caller divides by the number of labels in the whole accumulated
    batch. Tagging counts only positions where ``label_mask`` is 1 (real tokens).
    """
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, C) or (B, T, C)
    labels = batch["labels"]  # (B,) or (B, T)
    nll = cross_entropy(logits, labels)  # (B,) or (B, T)
    correct = (logits.argmax(-1) == labels).to(nll.dtype)  # (B,) or (B, T)
    if "label_mask" in batch:
        weight = batch["label_mask"].to(nll.dtype)  # (B, T)
        nll, correct = nll * weight, correct * weight
    return nll.sum(), correct.sum()


def trainable_parameters(model: nn.Module, train: TrainConfig) -> list[nn.Parameter]:
    """The parameters to train; frozen ones (``shared.training.is_frozen``) get no gradient."""
    params = []
    for path, p in model.named_parameters():
        p.requires_grad_(not is_frozen(path, train))
        if p.requires_grad:
            params.append(p)
    return params


def make_optimizer(
    params: list[nn.Parameter], train: TrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with decay on matrices and embeddings only, and the warmup-then-decay schedule.

    ``LambdaLR`` multiplies the peak by ``lr_factor(k)``, where k counts ``scheduler.step()``
    calls; :func:`train_step` calls it after ``optimizer.step()``, so update k uses factor k.
    """
    groups = [
        {
            "params": [p for p in params if decays(tuple(p.shape))],
            "weight_decay": train.weight_decay,
        },
        {"params": [p for p in params if not decays(tuple(p.shape))], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=train.learning_rate, betas=(train.b1, train.b2), eps=train.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: float(
            lr_factor(step, warmup_steps=train.warmup_steps, total_steps=train.total_steps)
        ),
    )
    return optimizer, scheduler


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale all gradients by ``min(1, max_norm / (norm + 1e-6))``; return the norm before.

    This is ``torch.nn.utils.clip_grad_norm_``, including its ``+ 1e-6``
    (``optax.clip_by_global_norm`` divides by the norm alone); ``jax_impl`` writes it out.
    A sharded model (``torch_impl.parallel``) holds DTensor gradients on different meshes,
    which ``clip_grad_norm_`` cannot stack: each gradient's norm is then made whole
    (``full_tensor``, a collective) before the same formula.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norms = [torch.linalg.vector_norm(g) for g in grads]
    norms = [n.full_tensor() if isinstance(n, DTensor) else n for n in norms]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0).item()  # float32, exactly
    for g in grads:
        g.mul_(scale)
    return total


def train_step(
    model: SequenceClassifier | TokenTagger,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    micro_batches: list[dict[str, torch.Tensor]],
    n_targets: float,
    *,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], tuple] = loss_terms,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update from ``micro_batches``: ``(mean loss, gradient norm before clipping)``.

    ``loss_fn(model, batch)`` gives ``(summed loss, anything)``; :func:`loss_terms` by default
    (the benchmarks pass a loss on the encoder's hidden states).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for batch in micro_batches:
        loss_sum, _ = loss_fn(model, batch)
        micro_loss = loss_sum / n_targets
        micro_loss.backward()  # accumulates into .grad
        loss = loss + micro_loss.detach()
    grad_norm = clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return loss, grad_norm


def _to_tensors(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


class Trainer:
    """The model, its optimizer and schedule; :meth:`step` makes one optimizer update."""

    def __init__(self, model: SequenceClassifier | TokenTagger, train: TrainConfig) -> None:
        self.model = model.train()
        self.train_config = train
        self.optimizer, self.scheduler = make_optimizer(trainable_parameters(model, train), train)

    @property
    def learning_rate(self) -> float:
        """The learning rate the next update will use (read from the optimizer)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, micro_batches: list[Batch]) -> tuple[float, float]:
        """One optimizer update: ``(mean loss over all micro-batches, gradient norm)``."""
        device = next(self.model.parameters()).device
        loss, grad_norm = train_step(
            self.model,
            self.optimizer,
            self.scheduler,
            self.train_config.max_grad_norm,
            [_to_tensors(b, device) for b in micro_batches],
            count_targets(micro_batches),
        )
        return float(loss), float(grad_norm)


def evaluate(model: SequenceClassifier | TokenTagger, batches: list[Batch]) -> float:
    """Accuracy over ``batches`` (of sequences, or of real tokens when tagging), in eval mode."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    correct = 0.0
    with torch.no_grad():
        for batch in batches:
            _, n_correct = loss_terms(model, _to_tensors(batch, device))
            correct += float(n_correct)
    model.train(was_training)
    return correct / count_targets(batches)
