"""Two synthetic tasks that need attention, as deterministic padded batches (NumPy only).

Both frameworks train on exactly the same arrays: batch ``i`` of a :class:`Dataset` is drawn
from its own generator, seeded by ``(split, seed, i)``, so it does not depend on which batches
were drawn before or by whom, and the "train" and "eval" splits never share a generator.

Tasks (token 0 is padding; real tokens are drawn uniformly from ``1 .. vocab_size - 1``):

* ``"first_last"``, sequence classification: label 1 if the first and the last *real*
  tokens are equal, else 0 (balanced). Lengths vary, so the model must find the last real
  token through attention, and tokens equal to the first also occur in the middle, so
  "does the first token occur again" is not enough.
* ``"seen_before"``, token tagging: label 1 at position t if the token at t already
  occurred at some position < t, else 0. Each token must look back for copies of itself,
  and only copies *before* it count.

A batch is a dict of NumPy arrays (B batch, T ``seq_len``, every batch padded to T so that
compiled train steps see one shape)::

    input_ids       (B, T) int32   0 at padding
    attention_mask  (B, T) int32   1 = real token, 0 = padding
    labels          (B,)   int32   first_last;  (B, T) int32 seen_before (0 at padding)
    label_mask      (B, T) int32   seen_before only: 1 where a label counts (real tokens)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PAD_ID",
    "SPLITS",
    "TASKS",
    "Batch",
    "Dataset",
    "TaskConfig",
    "concat",
    "count_targets",
    "majority_accuracy",
]

PAD_ID = 0
TASKS = ("first_last", "seen_before")
SPLITS = ("train", "eval")

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class TaskConfig:
    """Which task, and the shape of its sequences."""

    task: str = "first_last"  # one of TASKS
    vocab_size: int = 16  # ids 1 .. vocab_size - 1 are real tokens, 0 is padding
    seq_len: int = 16  # T: every batch is padded to this length
    min_len: int = 4  # shortest real sequence; lengths are uniform in [min_len, seq_len]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} must be one of {TASKS}")
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 3 (padding + 2 tokens)")
        if not 2 <= self.min_len <= self.seq_len:
            raise ValueError(
                f"need 2 <= min_len <= seq_len, got min_len={self.min_len}, seq_len={self.seq_len}"
            )

    @property
    def n_classes(self) -> int:
        return 2

    @property
    def is_tagging(self) -> bool:
        """True for a per-token task (labels (B, T)), False for per-sequence (labels (B,))."""
        return self.task == "seen_before"


class Dataset:
    """An endless, random-access stream of batches: ``dataset.batch(i)`` is the same every time."""

    def __init__(
        self, task: TaskConfig, *, batch_size: int, seed: int, split: str = "train"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        self.task = task
        self.batch_size = batch_size
        self.seed = seed
        self.split = split

    def batch(self, index: int) -> Batch:
        """Batch number ``index`` (any int >= 0), from a generator seeded by (split, seed, index)."""
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        rng = np.random.default_rng([SPLITS.index(self.split), self.seed, index])
        make = _first_last if self.task.task == "first_last" else _seen_before
        return make(self.task, self.batch_size, rng)

    def batches(self, start: int, count: int) -> list[Batch]:
        """``count`` consecutive batches from ``start``: the micro-batches of one optimizer step."""
        return [self.batch(i) for i in range(start, start + count)]


def _tokens_and_mask(
    task: TaskConfig, b: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random real tokens, padded: ``(input_ids (B, T), attention_mask (B, T), lengths (B,))``."""
    t = task.seq_len
    lengths = rng.integers(task.min_len, t + 1, size=b)  # (B,)
    mask = np.arange(t)[None, :] < lengths[:, None]  # (B, T) bool
    ids = rng.integers(1, task.vocab_size, size=(b, t))  # (B, T), never PAD_ID
    ids = np.where(mask, ids, PAD_ID)
    return ids, mask, lengths


def _first_last(task: TaskConfig, b: int, rng: np.random.Generator) -> Batch:
    ids, mask, lengths = _tokens_and_mask(task, b, rng)
    labels = rng.integers(0, 2, size=b)  # (B,) balanced
    rows = np.arange(b)
    first = ids[:, 0]  # (B,)
    # A token different from the first: first + an offset in 1 .. V-2, wrapped into 1 .. V-1.
    offset = rng.integers(1, task.vocab_size - 1, size=b)
    other = (first - 1 + offset) % (task.vocab_size - 1) + 1
    ids[rows, lengths - 1] = np.where(labels == 1, first, other)
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "labels": labels.astype(np.int32),
    }


def _seen_before(task: TaskConfig, b: int, rng: np.random.Generator) -> Batch:
    ids, mask, _ = _tokens_and_mask(task, b, rng)
    # seen[b, t] = any(ids[b, s] == ids[b, t] for s < t)
    same = ids[:, :, None] == ids[:, None, :]  # (B, T, S)
    earlier = np.tril(np.ones((task.seq_len, task.seq_len), dtype=bool), k=-1)  # s < t
    seen = np.any(same & earlier[None], axis=-1) & mask  # (B, T)
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "labels": seen.astype(np.int32),
        "label_mask": mask.astype(np.int32),
    }


def count_targets(batches: list[Batch]) -> int:
    """How many labels count in these batches: sequences, or real tokens when tagging.

    Gradient accumulation divides the summed loss of all micro-batches by this number, so
    that an accumulated step equals one step on the concatenated batch (micro-batches with
    different numbers of real tokens would be mis-weighted by averaging their means).
    """
    return int(
        sum(b["label_mask"].sum() if "label_mask" in b else b["labels"].size for b in batches)
    )


def concat(batches: list[Batch]) -> Batch:
    """Concatenate batches along the batch axis (micro-batches -> one big batch)."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def majority_accuracy(batches: list[Batch]) -> float:
    """Accuracy of always predicting the most frequent label: the floor a model must beat."""
    ones = total = 0
    for b in batches:
        weight = b.get("label_mask", np.ones_like(b["labels"]))
        ones += int((b["labels"] * weight).sum())
        total += int(weight.sum())
    return max(ones, total - ones) / total
