"""keras-hub's ``BertBackbone`` on Keras 3, from format-v1 weights: the ``keras`` peer.

Imported only in a process whose ``KERAS_BACKEND`` is already set ("jax" or "torch"):
Keras reads it once, on import. The backbone takes a dict of token ids, segment ids and a
padding mask; every call here passes the row's ids, segment ids 0 and a mask of ones (no
padding), as a user's would, and reads ``sequence_output``, the last hidden state.
keras-hub computes its attention with ``keras.ops.dot_product_attention`` (torch SDPA on
the torch backend, ``jax.nn.dot_product_attention`` on JAX), masked by the padding mask.

* torch backend: the backbone is a ``torch.nn.Module``;
  :class:`benchmarks.peers.keras_torch.KerasTorchEncoder` calls it with token ids, so that
  ``run_torch`` times it as any other model (the same AdamW step).
* JAX backend: :func:`jax_function` gives a pure function of the backbone's variables
  (``stateless_call``) for ``run_jax`` to jit, with the same loss, clipping and AdamW
  (``jax_impl.train``) as ours.
"""

from __future__ import annotations

from typing import Any

import keras
import keras_hub
import numpy as np

from shared import keras_hub as table
from shared.config import EncoderConfig

__all__ = ["backbone", "backbone_inputs", "jax_function"]


def backbone(cfg: EncoderConfig, weights: dict[str, np.ndarray], dtype: str) -> Any:
    """``BertBackbone`` with ``cfg``'s sizes holding ``weights``, in ``dtype`` ("float32" or
    "bfloat16": Keras's dtype policy of that name).

    Raises:
        ValueError: ``cfg`` is not a BERT that keras-hub computes (``shared.keras_hub``).
        shared.layouts.CheckpointError: a variable's shape disagrees with ``weights``.
    """
    model = keras_hub.models.BertBackbone(**table.backbone_kwargs(cfg), dtype=dtype)
    shapes = {v.path: tuple(v.shape) for v in model.weights}
    arrays = table.to_keras(weights, cfg, shapes)
    for v in model.weights:
        if v.path in arrays:
            v.assign(keras.ops.cast(arrays[v.path], v.dtype))
    return model


def backbone_inputs(ids: Any) -> dict[str, Any]:
    """The backbone's inputs for token ids (B, T): segment ids 0, padding mask all ones."""
    ops = keras.ops
    return {
        "token_ids": ids,
        "segment_ids": ops.zeros_like(ids),
        "padding_mask": ops.ones_like(ids),
    }


# --- JAX backend ------------------------------------------------------------------------------


def jax_function(
    phase: str, cfg: EncoderConfig, weights: dict[str, np.ndarray], dtype: str, ids: Any, train
):
    """``(function, arguments, argument numbers to donate)`` for ``run_jax``, as its
    ``_pure_function`` gives them for ours: ``forward(trainable, rest, ids)``;
    ``forward_backward(trainable, rest, ids)`` (gradients); ``train_step(trainable,
    opt_state, rest, ids) -> (trainable, opt_state, loss)``. ``train`` is the run's
    ``TrainConfig``."""
    import jax
    import jax.numpy as jnp
    import optax

    import jax_impl.train

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not 'jax'")
    model = backbone(cfg, weights, dtype)
    trainable = [v.value for v in model.trainable_variables]
    rest = [v.value for v in model.non_trainable_variables]

    def hidden(trainable, rest, ids, training: bool):
        out, _ = model.stateless_call(trainable, rest, backbone_inputs(ids), training=training)
        return out["sequence_output"]  # (B, T, D)

    if phase == "forward":

        def forward(trainable, rest, ids):
            return hidden(trainable, rest, ids, False)

        return forward, (trainable, rest, ids), ()

    def loss(trainable, rest, ids, scale):
        return jnp.sum(jnp.square(hidden(trainable, rest, ids, True).astype(jnp.float32))) / scale

    if phase == "forward_backward":

        def forward_backward(trainable, rest, ids):
            return jax.grad(loss)(trainable, rest, ids, jnp.float32(np.size(ids) * cfg.d_model))

        return forward_backward, (trainable, rest, ids), ()

    tx = jax_impl.train.make_optimizer(train)
    n_targets = jnp.float32(np.size(ids) * cfg.d_model)

    def train_step(trainable, opt_state, rest, ids):
        value, grads = jax.value_and_grad(loss)(trainable, rest, ids, n_targets)
        grads, _ = jax_impl.train.clip_grad_norm(grads, train.max_grad_norm)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, value

    return train_step, (trainable, tx.init(trainable), rest, ids), (0, 1)
