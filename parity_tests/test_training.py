"""Training parity: the same weights, batches and hyperparameters give the same training run.

Each known trap between ``torch.optim.AdamW`` + ``LambdaLR`` + ``clip_grad_norm_`` and
``optax.adamw`` has its own test (schedule step counting, clipping's ``+ 1e-6``, the decay
mask, accumulation averaging), then one test trains 200 steps with all of them switched on.
Expected values are computed by hand from the formulas, never taken from either framework.
"""

from __future__ import annotations

import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.train as jt
import torch_impl.train as tt
from shared import EncoderConfig
from shared.data import Dataset, TaskConfig, concat, count_targets
from shared.tolerances import TRAINING, assert_close, max_abs_diff, tolerance
from shared.training import TrainConfig

FIRST_LAST = TaskConfig(task="first_last", vocab_size=16, seq_len=12)
SEEN_BEFORE = TaskConfig(task="seen_before", vocab_size=16, seq_len=12)


def small_config(task: TaskConfig) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=task.vocab_size,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_layers=2,
        max_len=task.seq_len,
        dropout=0.0,
    )


def build_pair(task: TaskConfig, *, pooling: str = "first", seed: int = 0):
    """A PyTorch and a JAX task model holding the same weights (initialised in PyTorch)."""
    cfg = small_config(task)
    torch.manual_seed(seed)
    torch_model = tt.build_model(cfg, task, pooling=pooling)
    jax_model = jt.build_model(cfg, task, pooling=pooling, rngs=nnx.Rngs(seed))
    jt.import_task_weights(jax_model, tt.export_task_weights(torch_model))
    return torch_model, jax_model


# --- the 200-step run -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "pooling"),
    [(FIRST_LAST, "first"), (FIRST_LAST, "mean"), (SEEN_BEFORE, "first")],
    ids=["first_last-first_token", "first_last-mean_pool", "seen_before-tagging"],
)
def test_200_steps_give_the_same_losses_and_weights(task, pooling):
    train = TrainConfig(
        learning_rate=1e-3,
        warmup_steps=20,
        total_steps=200,
        batch_size=8,
        accumulation_steps=2,
        max_grad_norm=0.5,
        weight_decay=0.01,
    )
    torch_model, jax_model = build_pair(task, pooling=pooling)
    initial = tt.export_task_weights(torch_model)
    torch_trainer, jax_trainer = tt.Trainer(torch_model, train), jt.Trainer(jax_model, train)
    data = Dataset(task, batch_size=train.batch_size, seed=1)
    a = train.accumulation_steps
    losses, norms = {"torch": [], "jax": []}, {"torch": [], "jax": []}
    for step in range(train.total_steps):
        batches = data.batches(step * a, a)
        for name, trainer in (("torch", torch_trainer), ("jax", jax_trainer)):
            loss, norm = trainer.step(batches)
            losses[name].append(loss)
            norms[name].append(norm)

    # Clipping was active (warmup, decay and accumulation are on by construction).
    clipped = np.asarray(norms["torch"]) > train.max_grad_norm
    assert clipped.any(), "clipping never triggered: the test would not cover it"
    assert np.all(np.isfinite(losses["torch"])) and np.all(np.isfinite(losses["jax"]))
    assert losses["torch"][-1] < losses["torch"][0], "the model did not learn"

    worst = max_abs_diff(np.asarray(losses["jax"]), np.asarray(losses["torch"]))
    assert worst <= TRAINING.atol, f"per-step losses differ by up to {worst:.3g}"
    assert_close(norms["jax"], norms["torch"], TRAINING, "gradient norms before clipping")

    final_t = tt.export_task_weights(torch_model)
    final_j = jt.export_task_weights(jax_trainer.model)
    assert final_t.keys() == final_j.keys()
    for name in final_t:
        assert_close(final_j[name], final_t[name], TRAINING, f"{name} after 200 steps")
        if name.endswith("attention.k.bias"):  # frozen in both (shared.training.is_frozen)
            np.testing.assert_array_equal(final_t[name], initial[name])
            np.testing.assert_array_equal(final_j[name], initial[name])
        else:
            assert not np.array_equal(final_t[name], initial[name]), f"{name} never moved"


# --- the learning-rate schedule -------------------------------------------------------------


def test_first_learning_rates_follow_the_schedule_in_both():
    # warmup 4, total 10, peak 1e-2: (k + 1) / 4 for k < 4, then (10 - k) / 6.
    expected = 1e-2 * np.array([1 / 4, 2 / 4, 3 / 4, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    train = TrainConfig(learning_rate=1e-2, warmup_steps=4, total_steps=10)
    torch_model, jax_model = build_pair(FIRST_LAST)
    data = Dataset(FIRST_LAST, batch_size=4, seed=2)
    for name, trainer in (
        ("torch", tt.Trainer(torch_model, train)),
        ("jax", jt.Trainer(jax_model, train)),
    ):
        seen = []
        for step in range(10):
            seen.append(trainer.learning_rate)  # what the optimizer will use for this update
            trainer.step([data.batch(step)])
        assert_close(np.asarray(seen) / expected, np.ones(10), tolerance("float32"), name)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_first_update_moves_by_the_first_learning_rate(framework):
    # Adam's first update is lr * g / (|g| + eps) elementwise: |change| = lr(0) wherever
    # |g| >> eps. An off-by-one schedule would move by lr(1) = 2 * lr(0) here, or by 0.
    train = TrainConfig(learning_rate=1e-2, warmup_steps=4, total_steps=10, weight_decay=0.0)
    torch_model, jax_model = build_pair(FIRST_LAST)
    before = tt.export_task_weights(torch_model)
    batch = Dataset(FIRST_LAST, batch_size=8, seed=3).batch(0)
    if framework == "torch":
        trainer = tt.Trainer(torch_model, train)
        trainer.step([batch])
        after = tt.export_task_weights(trainer.model)
    else:
        trainer = jt.Trainer(jax_model, train)
        trainer.step([batch])
        after = jt.export_task_weights(trainer.model)
    change = np.abs(after["head.bias"] - before["head.bias"])  # from 0: an exact difference
    lr0 = 1e-2 / 4
    assert_close(change / lr0, np.ones_like(change), tolerance("float32"), "first update")


# --- gradient clipping ----------------------------------------------------------------------


def _clip_both(grads: list[np.ndarray], max_norm: float) -> dict[str, list[np.ndarray]]:
    """Clip the same gradients with each framework's training code (and plain optax)."""
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    holder = torch.nn.ParameterList(params)
    tt.clip_grad_norm(holder, max_norm)
    clipped_jax, _ = jt.clip_grad_norm(list(grads), max_norm)
    optax_clip = optax.clip_by_global_norm(max_norm)
    clipped_optax, _ = optax_clip.update(list(grads), optax_clip.init(list(grads)))
    return {
        "torch": [p.grad.numpy() for p in params],
        "jax": [np.asarray(g) for g in clipped_jax],
        "optax": [np.asarray(g) for g in clipped_optax],
    }


@pytest.mark.parametrize(
    ("scale", "max_norm"),
    [(1.0, 1.0), (1e-7, 1e-7)],
    ids=["unit_norms", "tiny_norms_where_the_1e-6_matters"],
)
def test_clipping_divides_by_norm_plus_1e_6_in_both(scale, max_norm):
    # Two tensors, global norm sqrt(3^2 + 4^2 + 12^2) * scale = 13 * scale.
    grads = [np.array([3.0, 4.0], np.float32) * scale, np.array([12.0], np.float32) * scale]
    factor = max_norm / (13.0 * scale + 1e-6)  # torch.nn.utils.clip_grad_norm_'s formula
    out = _clip_both(grads, max_norm)
    for name in ("torch", "jax"):
        for g, c in zip(grads, out[name], strict=True):
            assert_close(c / g, np.full(g.shape, factor), tolerance("float32"), name)
    # optax.clip_by_global_norm divides by the norm alone: with tiny norms it clips less.
    plain = max_norm / (13.0 * scale)
    for g, c in zip(grads, out["optax"], strict=True):
        assert_close(c / g, np.full(g.shape, plain), tolerance("float32"), "optax")
    if scale < 1e-3:  # the two formulas part ways: optax keeps 1.77x more of the gradient
        assert plain / factor > 1.5


def test_clipping_leaves_small_gradients_unchanged_in_both():
    grads = [np.array([0.3, -0.4], np.float32), np.array([0.0], np.float32)]  # norm 0.5
    out = _clip_both(grads, max_norm=1.0)
    for name in ("torch", "jax"):
        for g, c in zip(grads, out[name], strict=True):
            np.testing.assert_array_equal(c, g)


# --- gradient accumulation ------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_accumulated_micro_batches_equal_one_big_batch(framework):
    # Tagging: micro-batches hold different numbers of real tokens, so averaging their mean
    # losses would weight tokens unequally; dividing the summed loss by all tokens does not.
    train = TrainConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10, max_grad_norm=0.5)
    data = Dataset(SEEN_BEFORE, batch_size=4, seed=4)
    steps = [data.batches(2 * i, 2) for i in range(3)]
    assert all(count_targets(s[:1]) != count_targets(s[1:]) for s in steps)
    module = tt if framework == "torch" else jt
    results = []
    for split_up in (True, False):
        model = build_pair(SEEN_BEFORE)[0 if framework == "torch" else 1]
        trainer = module.Trainer(model, train)
        losses = [trainer.step(s if split_up else [concat(s)])[0] for s in steps]
        results.append((losses, module.export_task_weights(trainer.model)))
    (acc_losses, acc_weights), (big_losses, big_weights) = results
    tol = tolerance("float32")
    assert_close(acc_losses, big_losses, tol, "losses")
    for name in acc_weights:
        assert_close(acc_weights[name], big_weights[name], tol, name)


# --- weight decay and frozen parameters -----------------------------------------------------


def _decays_by_name(name: str) -> bool:
    """Written out by hand: weight matrices and embedding tables decay; vectors do not."""
    if name == "embeddings.token.weight" or name == "head.weight":
        return True
    return name.endswith(".weight") and (".attention." in name or ".ffn." in name)


def test_weight_decay_applies_to_the_same_parameters_in_both():
    # With zero gradients Adam's step is 0/(0 + eps) = 0: only decoupled decay moves a
    # parameter, by the factor (1 - lr * weight_decay).
    train = TrainConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5)
    factor = 1 - 0.1 * 0.5
    torch_model, jax_model = build_pair(SEEN_BEFORE)
    before = tt.export_task_weights(torch_model)

    params = tt.trainable_parameters(torch_model, train)
    optimizer, _ = tt.make_optimizer(params, train)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()

    graphdef, state, rest = nnx.split(jax_model, jt.trainable_filter(train), ...)
    tx = jt.make_optimizer(train)
    zeros = optax.tree_utils.tree_zeros_like(state)
    updates, _ = tx.update(zeros, tx.init(state), state)
    jax_model = nnx.merge(graphdef, optax.apply_updates(state, updates), rest)

    tol = tolerance("float32")
    for name, after in (
        ("torch", tt.export_task_weights(torch_model)),
        ("jax", jt.export_task_weights(jax_model)),
    ):
        for key, value in after.items():
            expected = before[key] * factor if _decays_by_name(key) else before[key]
            assert_close(value, expected, tol, f"{name}: {key}")


def test_key_bias_is_frozen_in_both_because_its_gradient_is_zero():
    task = SEEN_BEFORE
    torch_model, jax_model = build_pair(task)
    # The key bias adds q . b to every score of a query row; softmax removes it.
    batch = {
        k: torch.from_numpy(v) for k, v in Dataset(task, batch_size=8, seed=5).batch(0).items()
    }
    loss, _ = tt.loss_terms(torch_model, batch)
    loss.backward()
    k_bias = torch_model.encoder.encoder.layers[0].attention.k.bias.grad.numpy()
    q_bias = torch_model.encoder.encoder.layers[0].attention.q.bias.grad.numpy()
    assert_close(k_bias, np.zeros_like(k_bias), tolerance("float32"), "key bias gradient")
    assert np.abs(q_bias).max() > 1e3 * np.abs(k_bias).max()  # the query bias does learn

    train = TrainConfig()
    expected = {f"encoder.encoder.layers.{i}.attention.k.bias" for i in range(2)}
    tt.trainable_parameters(torch_model, train)
    frozen_t = {n for n, p in torch_model.named_parameters() if not p.requires_grad}
    _, _, frozen, _ = nnx.split(jax_model, jt.trainable_filter(train), nnx.Param, ...)
    frozen_j = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(frozen)}
    assert frozen_t == expected
    assert frozen_j == expected

    everything = TrainConfig(freeze_key_bias=False)
    assert all(p.requires_grad for p in tt.trainable_parameters(torch_model, everything))
    assert len(tt.trainable_parameters(torch_model, everything)) == len(
        list(torch_model.parameters())
    )
    _, _, frozen, _ = nnx.split(jax_model, jt.trainable_filter(everything), nnx.Param, ...)
    assert len(nnx.to_flat_state(frozen)) == 0


# --- head weights ---------------------------------------------------------------------------


def test_task_weights_round_trip_and_head_is_checked():
    torch_model, jax_model = build_pair(FIRST_LAST)
    exported = tt.export_task_weights(torch_model)
    assert exported["head.weight"].shape == (32, 2)  # (in, out), as format v1
    back = jt.export_task_weights(jax_model)
    for name in exported:
        np.testing.assert_array_equal(back[name], exported[name])
    # Logits agree, so the head's transpose is right.
    batch = Dataset(FIRST_LAST, batch_size=4, seed=6).batch(0)
    with torch.no_grad():
        logits_t = torch_model(
            torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
        )
    logits_j = jax_model(batch["input_ids"], batch["attention_mask"])
    assert_close(np.asarray(logits_j), logits_t.numpy(), tolerance("float32"), "logits")

    bad = dict(exported, **{"head.weight": exported["head.weight"].T})
    with pytest.raises(ValueError, match=r"head.weight.*\(32, 2\)"):
        jt.import_task_weights(jax_model, bad)
    missing = {k: v for k, v in exported.items() if k != "head.bias"}
    with pytest.raises(ValueError, match="head"):
        tt.import_task_weights(torch_model, missing)


def test_exported_weights_are_a_snapshot_not_a_view():
    torch_model, _ = build_pair(SEEN_BEFORE)
    exported = tt.export_task_weights(torch_model)
    copy = {k: v.copy() for k, v in exported.items()}
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(1.0)
    for name in exported:
        np.testing.assert_array_equal(exported[name], copy[name])


# --- dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_dropout_draws_new_masks_at_every_step_and_none_in_evaluation(framework):
    # A learning rate of 1e-12 leaves the weights as they are: only dropout changes the loss.
    train = TrainConfig(learning_rate=1e-12, warmup_steps=0, total_steps=10)
    task = FIRST_LAST
    batches = Dataset(task, batch_size=8, seed=7).batches(0, 2)  # two micro-batches
    module = tt if framework == "torch" else jt
    losses = {}
    for dropout in (0.0, 0.5):
        cfg = small_config(task).replace(dropout=dropout)
        torch.manual_seed(0)
        if framework == "torch":
            model = tt.build_model(cfg, task)
        else:
            model = jt.build_model(cfg, task, rngs=nnx.Rngs(0))
        trainer = module.Trainer(model, train)
        losses[dropout] = [trainer.step(batches)[0] for _ in range(2)]
        accuracy = [module.evaluate(trainer.model, batches) for _ in range(2)]
        assert accuracy[0] == accuracy[1]  # evaluation runs without dropout
    assert_close(losses[0.0][1], losses[0.0][0], tolerance("float32"), "no dropout")
    assert losses[0.5][1] != losses[0.5][0]  # a fresh dropout mask at the second step
