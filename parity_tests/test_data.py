"""The synthetic tasks of ``shared.data``: labels checked by plain loops, padding, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data import PAD_ID, Dataset, TaskConfig, concat, count_targets, majority_accuracy

FIRST_LAST = TaskConfig(task="first_last", vocab_size=10, seq_len=12, min_len=3)
SEEN_BEFORE = TaskConfig(task="seen_before", vocab_size=10, seq_len=12, min_len=3)


def lengths_of(batch) -> np.ndarray:
    return batch["attention_mask"].sum(axis=1)


@pytest.mark.parametrize("task", [FIRST_LAST, SEEN_BEFORE], ids=lambda t: t.task)
def test_padding_is_a_suffix_of_pad_ids_masked_out(task):
    batch = Dataset(task, batch_size=256, seed=0).batch(0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (256, task.seq_len)
    assert ids.dtype == mask.dtype == np.int32
    lengths = lengths_of(batch)
    assert lengths.min() >= task.min_len and lengths.max() <= task.seq_len
    assert len(np.unique(lengths)) > 1  # lengths vary
    for row, n in zip(mask, lengths, strict=True):
        np.testing.assert_array_equal(row, [1] * n + [0] * (task.seq_len - n))
    np.testing.assert_array_equal(ids == PAD_ID, mask == 0)
    assert ids.max() < task.vocab_size


def test_first_last_labels_say_whether_first_and_last_real_tokens_are_equal():
    batch = Dataset(FIRST_LAST, batch_size=512, seed=1).batch(0)
    assert batch["labels"].shape == (512,)
    assert "label_mask" not in batch
    for ids, n, label in zip(batch["input_ids"], lengths_of(batch), batch["labels"], strict=True):
        assert label == int(ids[0] == ids[n - 1])
    assert 0.4 < batch["labels"].mean() < 0.6  # balanced
    # The first token also occurs in the middle of many sequences of either label, so
    # "does the first token occur again?" does not solve the task: position matters.
    middle_repeat = [
        ids[0] in ids[1 : n - 1]
        for ids, n in zip(batch["input_ids"], lengths_of(batch), strict=True)
    ]
    labels = batch["labels"].astype(bool)
    assert np.mean(np.asarray(middle_repeat)[~labels]) > 0.3


def test_seen_before_labels_mark_tokens_that_occurred_earlier():
    batch = Dataset(SEEN_BEFORE, batch_size=64, seed=2).batch(0)
    assert batch["labels"].shape == batch["label_mask"].shape == (64, SEEN_BEFORE.seq_len)
    np.testing.assert_array_equal(batch["label_mask"], batch["attention_mask"])
    for ids, n, labels in zip(batch["input_ids"], lengths_of(batch), batch["labels"], strict=True):
        seen: set[int] = set()
        for t in range(SEEN_BEFORE.seq_len):
            if t < n:
                assert labels[t] == int(ids[t] in seen), (ids, t)
                seen.add(int(ids[t]))
            else:
                assert labels[t] == 0


def test_batches_are_deterministic_by_index_and_split():
    a = Dataset(SEEN_BEFORE, batch_size=8, seed=3)
    b = Dataset(SEEN_BEFORE, batch_size=8, seed=3)
    for key in ("input_ids", "labels"):
        np.testing.assert_array_equal(a.batch(5)[key], b.batch(5)[key])  # any order, any reader
    assert not np.array_equal(a.batch(5)["input_ids"], a.batch(6)["input_ids"])
    other_seed = Dataset(SEEN_BEFORE, batch_size=8, seed=4).batch(5)["input_ids"]
    assert not np.array_equal(a.batch(5)["input_ids"], other_seed)
    held_out = Dataset(SEEN_BEFORE, batch_size=8, seed=3, split="eval").batch(5)["input_ids"]
    assert not np.array_equal(a.batch(5)["input_ids"], held_out)


def test_count_targets_concat_and_majority_baseline():
    cls = Dataset(FIRST_LAST, batch_size=4, seed=5).batches(0, 3)
    assert count_targets(cls) == 12  # one label per sequence
    tags = Dataset(SEEN_BEFORE, batch_size=4, seed=5).batches(0, 3)
    assert count_targets(tags) == sum(int(b["attention_mask"].sum()) for b in tags)
    big = concat(tags)
    assert big["input_ids"].shape == (12, SEEN_BEFORE.seq_len)
    assert count_targets([big]) == count_targets(tags)
    labels = np.concatenate([b["labels"][b["label_mask"] == 1] for b in tags])
    assert majority_accuracy(tags) == max(labels.mean(), 1 - labels.mean())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "copy"}, "task='copy' must be one of"),
        ({"vocab_size": 2}, "vocab_size=2 must be >= 3"),
        ({"min_len": 20}, "min_len=20, seq_len=16"),
    ],
)
def test_invalid_task_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(**kwargs)
