"""Training in JAX / Flax NNX: task heads, AdamW with warmup and decay, clipping, accumulation.

Mirrors ``torch_impl/train.py`` function for function; what both share (the schedule, the
decay rule, the hyperparameters, the head's weight names) lives in ``shared/training.py``.

One optimizer update (:func:`train_step`, a pure function of pytrees under ``jax.jit``):

1. for each micro-batch, add the gradient of ``loss_sum / n_targets``, where ``n_targets``
   counts the labels of *all* micro-batches: the update equals one on the concatenated batch;
2. clip the global gradient norm: ``g *= min(1, max_norm / (norm + 1e-6))``
   (:func:`clip_grad_norm`, written out to match ``torch.nn.utils.clip_grad_norm_``;
   ``optax.clip_by_global_norm`` divides by the norm alone);
3. AdamW (decoupled weight decay on matrices and embeddings only);
4. the learning-rate schedule advances inside the optimizer: optax calls it with its own
   update count, starting at 0, so update k uses ``lr_factor(k)``, as ``LambdaLR`` does.

Notation: B batch, T sequence length, D d_model, C classes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.attention import linear
from jax_impl.encoder import TransformerEncoder
from jax_impl.weights import export_weights, import_weights, to_numpy
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

__all__ = [
    "SequenceClassifier",
    "TokenTagger",
    "Trainer",
    "build_model",
    "clip_grad_norm",
    "compiler_options",
    "cross_entropy",
    "evaluate",
    "export_task_weights",
    "import_task_weights",
    "loss_terms",
    "make_optimizer",
    "train_step",
    "trainable_filter",
]


class SequenceClassifier(nnx.Module):
    """The encoder, a pooling over positions, and a linear layer: logits (B, C) per sequence.

    ``pooling="first"``: the first position's output (BERT's [CLS] habit); ``"mean"``: the
    average over real tokens (padding excluded).
    """

    def __init__(
        self, cfg: EncoderConfig, n_classes: int, *, pooling: str = "first", rngs: nnx.Rngs
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} must be one of {POOLINGS}")
        self.pooling = pooling
        self.encoder = TransformerEncoder(cfg, rngs=rngs)
        self.head = linear(cfg.d_model, n_classes, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        h = self.encoder(input_ids, attention_mask)  # (B, T, D)
        if self.pooling == "first":
            pooled = h[:, 0]  # (B, D)
        else:
            m = attention_mask.astype(h.dtype)[:, :, None]  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1)  # (B, D)
        return self.head(pooled)  # (B, C)


class TokenTagger(nnx.Module):
    """The encoder and a linear layer applied at every position: logits (B, T, C)."""

    def __init__(self, cfg: EncoderConfig, n_classes: int, *, rngs: nnx.Rngs) -> None:
        self.encoder = TransformerEncoder(cfg, rngs=rngs)
        self.head = linear(cfg.d_model, n_classes, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return self.head(self.encoder(input_ids, attention_mask))  # (B, T, C)


def build_model(
    cfg: EncoderConfig, task: TaskConfig, *, pooling: str = "first", rngs: nnx.Rngs
) -> SequenceClassifier | TokenTagger:
    """The task model for ``task`` (in train mode, like the PyTorch one)."""
    if task.is_tagging:
        return TokenTagger(cfg, task.n_classes, rngs=rngs)
    return SequenceClassifier(cfg, task.n_classes, pooling=pooling, rngs=rngs)


def export_task_weights(model: SequenceClassifier | TokenTagger) -> dict[str, np.ndarray]:
    """The encoder's format-v1 weights plus ``head.weight`` (D, C) and ``head.bias`` (C,)."""
    weights = export_weights(model.encoder)  # copies, not views of the live parameters
    weights["head.weight"] = to_numpy(model.head.kernel[...]).copy()  # already (in, out)
    weights["head.bias"] = to_numpy(model.head.bias[...]).copy()
    return weights


def import_task_weights(
    model: SequenceClassifier | TokenTagger, weights: dict[str, np.ndarray]
) -> SequenceClassifier | TokenTagger:
    """Copy a task weight map (format v1 + ``head.*``) into ``model``. Strict, as format v1."""
    encoder, head = split_head(weights)
    validate_head(head, *head_shapes_of(model))
    import_weights(model.encoder, encoder)
    model.head.kernel[...] = jnp.asarray(head["head.weight"], dtype=model.head.kernel.dtype)
    model.head.bias[...] = jnp.asarray(head["head.bias"], dtype=model.head.bias.dtype)
    return model


def head_shapes_of(model: SequenceClassifier | TokenTagger) -> tuple[int, int]:
    """(D, C) of the model's head."""
    return model.head.in_features, model.head.out_features


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label], per example: logits (..., C), labels (...) -> (...)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)  # (..., C)
    return -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def loss_terms(
    model: SequenceClassifier | TokenTagger, batch: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """``(summed cross-entropy, number of correct predictions)`` over the batch's labels.

    Sums, not means: the caller divides by the number of labels in the whole accumulated
    batch. Tagging counts only positions where ``label_mask`` is 1 (real tokens).
    """
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, C) or (B, T, C)
    labels = batch["labels"]  # (B,) or (B, T)
    nll = cross_entropy(logits, labels)  # (B,) or (B, T)
    correct = (logits.argmax(-1) == labels).astype(nll.dtype)  # (B,) or (B, T)
    if "label_mask" in batch:
        weight = batch["label_mask"].astype(nll.dtype)  # (B, T)
        nll, correct = nll * weight, correct * weight
    return nll.sum(), correct.sum()


def trainable_filter(train: TrainConfig) -> Callable[[tuple, Any], bool]:
    """An nnx filter for the parameters to train; frozen ones (``shared.training.is_frozen``)
    stay in the rest of the state, which is not differentiated."""

    def trainable(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and not is_frozen(".".join(map(str, path)), train)

    return trainable


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """AdamW with decay on matrices and embeddings only, and the warmup-then-decay schedule.

    optax calls the schedule with its own update count (0 for the first update), so update k
    uses ``lr_factor(k)``, as ``LambdaLR`` stepped after ``optimizer.step()`` does.
    """

    def schedule(count: jax.Array) -> jax.Array:
        factor = lr_factor(
            count, warmup_steps=train.warmup_steps, total_steps=train.total_steps, xp=jnp
        )
        return train.learning_rate * factor

    adamw = optax.adamw(
        schedule,
        b1=train.b1,
        b2=train.b2,
        eps=train.eps,
        weight_decay=train.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: decays(p.shape), params),
    )

    # optax's bias correction computes ``b1 ** count`` (a float to an int32 power), which
    # strict dtype promotion (the test suite's setting) rejects; the rest stays strict.
    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return adamw.update(updates, state, params)

    return optax.GradientTransformation(adamw.init, update)


# XLA:CPU's instruction order that keeps the fewest bytes live (DebugOptions.CpuSchedulerType)
MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def compiler_options(platform: str, *, memory_scheduler: bool = True) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` of a training step on ``platform`` (a JAX
    platform name: ``jax.default_backend()``, ``device.platform``): on "cpu", XLA's
    memory-optimised scheduler unless ``memory_scheduler`` is false; on any other platform
    none (XLA's own choice).

    XLA:CPU's default scheduler is concurrency-optimised: it starts each instruction as early
    as its operands allow, so more is live than the backward needs (BERT-base, T=2048, flash,
    no remat: 1,299 MiB planned against 1,008 MiB with the memory-optimised order). The
    memory-optimised scheduler orders the same instructions to keep the fewest bytes live
    (``studies/cpu_scheduler.py`` measures both). Remat does not rely on either order: its
    recomputation is tied to the backward by data (``jax_impl.encoder._checkpointed``)."""
    return dict(MEMORY_SCHEDULER) if platform == "cpu" and memory_scheduler else {}


def clip_grad_norm(grads, max_norm: float):
    """Scale all gradients by ``min(1, max_norm / (norm + 1e-6))``: ``(grads, norm before)``.

    The formula of ``torch.nn.utils.clip_grad_norm_``, ``+ 1e-6`` included, so both
    frameworks clip alike; ``optax.clip_by_global_norm`` uses ``max_norm / norm``.
    """
    norm = optax.tree.norm(grads)
    scale = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * scale, grads), norm


def train_step(
    graphdef: nnx.GraphDef,
    trainable: Callable[[tuple, Any], bool],
    tx: optax.GradientTransformation,
    max_grad_norm: float,
    params: nnx.State,
    rest: nnx.State,
    opt_state: optax.OptState,
    micro_batches: list[dict[str, jax.Array]],
    n_targets: jax.Array,
    *,
    loss_fn: Callable[[nnx.Module, dict[str, jax.Array]], tuple] = loss_terms,
) -> tuple[nnx.State, nnx.State, optax.OptState, jax.Array, jax.Array]:
    """One optimizer update from ``micro_batches``: new state, mean loss, gradient norm.

    ``loss_fn(model, batch)`` gives ``(summed loss, anything)``; :func:`loss_terms` by default
    (the benchmarks pass a loss on the encoder's hidden states).

    A pure function of the model's state (``params``: the parameters to train, selected by
    the ``trainable`` filter; ``rest``: frozen parameters, dropout RNG counters, constants),
    to run under ``jax.jit`` with the first four arguments bound.
    """

    def micro_loss_fn(params: nnx.State, rest: nnx.State, batch: dict[str, jax.Array]):
        # copy=True: fresh Variables in this trace, so that dropout may advance its RNG
        # counters here (the arguments' Variables belong to the enclosing jit trace).
        model = nnx.merge(graphdef, params, rest, copy=True)
        loss_sum, _ = loss_fn(model, batch)
        _, _, rest = nnx.split(model, trainable, ...)  # dropout advanced its RNG counters
        return loss_sum / n_targets, rest

    grad_fn = jax.value_and_grad(micro_loss_fn, has_aux=True)
    grads = jax.tree.map(jnp.zeros_like, params)
    loss = 0.0
    for batch in micro_batches:  # unrolled under jit: one trace per micro-batch
        (micro_loss, rest), micro_grads = grad_fn(params, rest, batch)
        grads = jax.tree.map(jnp.add, grads, micro_grads)  # accumulate, as .backward() does
        loss = loss + micro_loss
    grads, grad_norm = clip_grad_norm(grads, max_grad_norm)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, rest, opt_state, loss, grad_norm


class Trainer:
    """The model's state, its optimizer and schedule; :meth:`step` makes one optimizer update.

    The state lives as pytrees (``params``, ``rest``, ``opt_state``) between steps, so a step
    is one call of the jitted pure function with no Flax graph traversal;
    :attr:`model` rebuilds a module from the current state on demand.
    """

    def __init__(self, model: SequenceClassifier | TokenTagger, train: TrainConfig) -> None:
        model.train()
        trainable = trainable_filter(train)
        self.graphdef, self.params, self.rest = nnx.split(model, trainable, ...)
        self.train_config = train
        self.tx = make_optimizer(train)
        self.opt_state = self.tx.init(self.params)
        self._train_step = jax.jit(
            functools.partial(train_step, self.graphdef, trainable, self.tx, train.max_grad_norm),
            compiler_options=compiler_options(jax.default_backend()) or None,
        )

    @property
    def model(self) -> SequenceClassifier | TokenTagger:
        """A module holding the current weights (in train mode)."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    @property
    def learning_rate(self) -> float:
        """The learning rate the next update will use (from the optimizer's update count)."""
        count = optax.tree_utils.tree_get(self.opt_state, "ScaleByScheduleState").count
        train = self.train_config
        factor = lr_factor(
            int(count), warmup_steps=train.warmup_steps, total_steps=train.total_steps
        )
        return float(train.learning_rate * factor)

    def step(self, micro_batches: list[Batch]) -> tuple[float, float]:
        """One optimizer update: ``(mean loss over all micro-batches, gradient norm)``."""
        self.params, self.rest, self.opt_state, loss, grad_norm = self._train_step(
            self.params,
            self.rest,
            self.opt_state,
            micro_batches,
            jnp.float32(count_targets(micro_batches)),
        )
        return float(loss), float(grad_norm)


@nnx.jit
def _eval_terms(
    model: SequenceClassifier | TokenTagger, batch: Batch
) -> tuple[jax.Array, jax.Array]:
    return loss_terms(model, batch)


def evaluate(model: SequenceClassifier | TokenTagger, batches: list[Batch]) -> float:
    """Accuracy over ``batches`` (of sequences, or of real tokens when tagging), in eval mode.

    Runs on an eval-mode view (``nnx.view`` shares the arrays): ``model`` keeps its mode.
    """
    view = nnx.view(model, deterministic=True)
    correct = 0.0
    for batch in batches:
        _, n_correct = _eval_terms(view, batch)
        correct += float(n_correct)
    return correct / count_targets(batches)
