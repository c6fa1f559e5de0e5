"""Behaviour both implementations must show, whatever the weights: padding and causality
isolate positions, fully padded sequences stay finite, dropout drops the configured fraction
in train mode only, and the JAX model computes the same numbers eagerly and under ``jit``.

Where a test asks for bit-identical numbers, the docstring says why exactness (and not only
closeness) is the right claim; everything else is compared with ``shared.tolerances``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import torch_impl
from parity_tests.helpers import random_weights, tiny_config, to_numpy
from shared import EncoderConfig
from shared.tolerances import assert_close, tolerance

POST = tiny_config(vocab_size=30)
# Everything else switched on: pre-norm, learned positions, token types, both extra norms.
PRE = POST.replace(
    norm_first=True,
    positional="learned",
    type_vocab_size=2,
    embed_norm=True,
    final_norm=True,
    activation="gelu_tanh",
)
CONFIGS = [pytest.param(POST, id="post_norm_sinusoidal"), pytest.param(PRE, id="pre_norm_learned")]
BACKENDS = ["math", "fused"]


@dataclasses.dataclass(frozen=True)
class Framework:
    """Builds and runs one framework's model on NumPy inputs, returning NumPy outputs."""

    name: str
    torch_device: torch.device

    def from_weights(self, cfg: EncoderConfig, weights, backend: str = "math"):
        """A model holding ``weights``, in eval mode (as ``from_weights`` returns it)."""
        if self.name == "torch":
            return torch_impl.from_weights(weights, cfg, backend=backend).to(self.torch_device)
        return jax_impl.from_weights(weights, cfg, backend=backend)

    def fresh(self, cfg: EncoderConfig, seed: int):
        """A newly constructed model, in whatever mode the framework starts in."""
        if self.name == "torch":
            torch.manual_seed(seed)
            return torch_impl.TransformerEncoder(cfg).to(self.torch_device)
        return jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(seed))

    def run(self, model, ids, mask=None, types=None, **kwargs):
        if self.name == "torch":

            def native(a):
                return None if a is None else torch.as_tensor(a, device=self.torch_device)

            with torch.no_grad():
                out = model(native(ids), native(mask), native(types), **kwargs)
        else:

            def native(a):
                return None if a is None else jnp.asarray(np.asarray(a).astype(np.int32))

            out = model(native(ids), native(mask), native(types), **kwargs)
        if isinstance(out, tuple):
            return tuple(
                [to_numpy(a) for a in o] if isinstance(o, list) else to_numpy(o) for o in out
            )
        return to_numpy(out)

    def gradients(self, model, ids, mask, r, **kwargs) -> dict[str, np.ndarray]:
        """Gradients of sum(h * r) with respect to every parameter."""
        if self.name == "torch":
            model.zero_grad()
            h = model(
                torch.as_tensor(ids, device=self.torch_device),
                torch.as_tensor(mask, device=self.torch_device),
                **kwargs,
            )
            (h * torch.as_tensor(r, device=self.torch_device)).sum().backward()
            return {n: to_numpy(p.grad) for n, p in model.named_parameters()}

        def loss(m):
            return (
                m(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), **kwargs) * r
            ).sum()

        grads = nnx.grad(loss)(model)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        return {jax.tree_util.keystr(path): np.asarray(g) for path, g in flat}

    def set_mode(self, model, mode: str) -> None:
        getattr(model, mode)()  # .train() / .eval() in both frameworks


@pytest.fixture(params=["torch", "jax"])
def fw(request) -> Framework:
    # Ask for torch_device only for torch: it skips on TPU, where the JAX cases still run.
    if request.param == "torch":
        return Framework("torch", request.getfixturevalue("torch_device"))
    return Framework("jax", torch.device("cpu"))


def _padded_batch(cfg: EncoderConfig, lengths, seq_len: int, seed: int):
    """Right-padded ids (pad id 0), the 0/1 mask and token types (0 on padding)."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(1, cfg.vocab_size, (len(lengths), seq_len)) * mask
    types = None
    if cfg.type_vocab_size:
        types = rng.integers(0, cfg.type_vocab_size, ids.shape) * mask
    return ids, mask, types


# ---------------------------------------------------------------------------------------------
# Padding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_adding_padding_does_not_change_outputs_at_real_positions(fw, cfg, backend, device):
    """Each sequence alone (no mask, no padding) vs the same sequence right-padded in a batch.

    Close, not identical: the padded run multiplies longer matrices (S = 10 keys instead of
    L), so the sums run in another order; masked keys themselves contribute exact zeros."""
    model = fw.from_weights(cfg, random_weights(cfg, seed=1), backend)
    lengths = [10, 4, 7]
    ids, mask, types = _padded_batch(cfg, lengths, 10, seed=2)
    batched = fw.run(model, ids, mask, types)
    tol = tolerance("float32", device)
    for i, length in enumerate(lengths):
        alone = fw.run(
            model,
            ids[i : i + 1, :length],
            None,
            None if types is None else types[i : i + 1, :length],
        )
        assert_close(batched[i, :length], alone[0], tol, f"sequence {i} (length {length})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_padding_token_ids_do_not_change_real_outputs(fw, cfg, backend):
    """Changing the ids (and token types) at padded positions leaves real positions bit for bit
    unchanged: a masked key gets weight exactly 0 (finite fill, then the weights are zeroed),
    and 0 * v adds exactly 0 to the same sums in the same order, since the shapes do not
    change; everything else is per position. Padded positions themselves do change (their
    own token enters their own residual stream), which shows the change reached the model."""
    model = fw.from_weights(cfg, random_weights(cfg, seed=3), backend)
    ids, mask, types = _padded_batch(cfg, [10, 4, 7], 10, seed=4)
    rng = np.random.default_rng(5)
    pad = mask == 0
    other_ids = np.where(pad, rng.integers(1, cfg.vocab_size, ids.shape), ids)
    other_types = None
    if types is not None:
        other_types = np.where(pad, rng.integers(0, cfg.type_vocab_size, ids.shape), types)

    h, attn = fw.run(model, ids, mask, types, return_attention=True)
    h2, attn2 = fw.run(model, other_ids, mask, other_types, return_attention=True)
    assert np.array_equal(h2[~pad], h[~pad])
    for layer, (a, a2) in enumerate(zip(attn, attn2, strict=True)):
        real_queries = ~pad[:, None, :, None]  # (B, 1, T, 1)
        assert np.array_equal(np.where(real_queries, a2, 0), np.where(real_queries, a, 0)), layer
    assert not np.array_equal(h2[pad], h[pad])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_outputs_at_padded_positions_are_finite(fw, cfg, backend):
    model = fw.from_weights(cfg, random_weights(cfg, seed=6), backend)
    ids, mask, types = _padded_batch(cfg, [10, 1, 3], 10, seed=7)
    h = fw.run(model, ids, mask, types)
    assert np.all(np.isfinite(h[mask == 0]))


# ---------------------------------------------------------------------------------------------
# Causality


@pytest.mark.parametrize("padding", [False, True], ids=["no_padding", "with_padding"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_with_is_causal_position_t_does_not_depend_on_later_tokens(fw, cfg, backend, padding):
    """Change the token at t0 = 6: outputs at t < 6 stay bit for bit the same. Exact, for the
    reason padding ids change nothing: key t0 is masked for every query t < t0, so its weight
    is exactly 0 and 0 * v contributes exactly 0 to sums of unchanged shape and order. The
    output at t0 itself must change, or the test would prove nothing."""
    model = fw.from_weights(cfg, random_weights(cfg, seed=8), backend)
    t0 = 6
    ids, mask, types = _padded_batch(cfg, [10, 8, 7], 10, seed=9)
    if not padding:
        mask = None
    changed = ids.copy()
    changed[:, t0] = changed[:, t0] % (cfg.vocab_size - 1) + 1  # another real token id
    h = fw.run(model, ids, mask, types, is_causal=True)
    h2 = fw.run(model, changed, mask, types, is_causal=True)
    assert np.array_equal(h2[:, :t0], h[:, :t0])
    assert np.all(np.any(h2[:, t0] != h[:, t0], axis=-1))


# ---------------------------------------------------------------------------------------------
# A sequence that is all padding


@pytest.mark.parametrize("is_causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_fully_padded_sequence_is_finite_with_zero_attention_and_finite_gradients(
    fw, cfg, is_causal, device
):
    """A query with no key to attend to gets all-zero attention weights (docs/design.md, "Conventions"), so the
    outputs are finite, and so are the gradients (no NaN from a 0/0 softmax)."""
    weights = random_weights(cfg, seed=10)
    model = fw.from_weights(cfg, weights)
    ids, mask, types = _padded_batch(cfg, [10, 5, 0], 10, seed=11)
    h, attentions = fw.run(model, ids, mask, types, return_attention=True, is_causal=is_causal)
    assert np.all(np.isfinite(h))
    for layer, a in enumerate(attentions):
        assert np.array_equal(a[2], np.zeros_like(a[2])), f"layer {layer}: padded sequence"
        # Sanity: the other sequences' rows are proper distributions.
        assert_close(
            a[:2].sum(-1), np.ones_like(a[:2].sum(-1)), tolerance("float32", device), "rows"
        )

    r = np.random.default_rng(12).standard_normal(h.shape).astype(np.float32)
    grads = fw.gradients(model, ids, mask, r, is_causal=is_causal)
    assert len(grads) == len(weights)  # one gradient per format-v1 tensor
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
    assert any(np.any(g != 0) for g in grads.values())


# ---------------------------------------------------------------------------------------------
# Dropout and modes

DROPOUT_CFG = POST.replace(d_model=64, n_heads=4, d_ff=64, n_layers=1, max_len=32)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_train_mode_drops_about_the_configured_fraction_and_differs_between_calls(fw, p, device):
    """The embedding output (``hidden_states[0]``) is where the embedding dropout acts. In
    train mode a fraction of about p of its elements are exactly zero, the rest are the eval
    values scaled by 1 / (1 - p) (inverted dropout), and two calls drop different elements."""
    cfg = DROPOUT_CFG.replace(dropout=p)
    model = fw.fresh(cfg, seed=13)  # train mode
    ids = np.random.default_rng(14).integers(0, cfg.vocab_size, (8, 32))
    h1, (emb1, *_) = fw.run(model, ids, return_hidden_states=True)
    h2, (emb2, *_) = fw.run(model, ids, return_hidden_states=True)
    fw.set_mode(model, "eval")
    h_eval, (emb_eval, *_) = fw.run(model, ids, return_hidden_states=True)

    assert np.count_nonzero(emb_eval == 0) == 0  # so every zero in train mode was dropped
    # Each element is dropped independently with probability p: the dropped count is
    # Binomial(n, p), whose fraction has standard deviation sqrt(p (1 - p) / n) (n = 16384,
    # 0.0023 for p = 0.1). A 5-sigma bound fails by chance with probability below 1e-6.
    n = emb1.size
    bound = 5 * math.sqrt(p * (1 - p) / n)
    for emb in (emb1, emb2):
        dropped = emb == 0
        assert abs(dropped.mean() - p) <= bound, (dropped.mean(), p, bound)
        assert_close(
            emb[~dropped], emb_eval[~dropped] / (1 - p), tolerance("float32", device), "kept"
        )
    assert not np.array_equal(emb1 == 0, emb2 == 0)  # a new mask on every call
    assert not np.array_equal(h1, h2)
    assert not np.array_equal(h1, h_eval)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_eval_mode_is_deterministic_and_equals_dropout_zero(fw, cfg):
    """In eval mode every dropout is the identity, so a model with dropout 0.5 runs exactly the
    operations of the same model with dropout 0 on the same numbers: bit-identical outputs."""
    weights = random_weights(cfg, seed=15)
    with_dropout = fw.from_weights(cfg.replace(dropout=0.5), weights)  # eval mode
    without = fw.from_weights(cfg.replace(dropout=0.0), weights)
    ids, mask, types = _padded_batch(cfg, [10, 6, 3], 10, seed=16)
    first = fw.run(with_dropout, ids, mask, types)
    assert np.array_equal(fw.run(with_dropout, ids, mask, types), first)
    assert np.array_equal(fw.run(without, ids, mask, types), first)


def _import(fw: Framework, model, weights):
    (torch_impl if fw.name == "torch" else jax_impl).import_weights(model, weights)


def test_models_start_in_train_mode_and_eval_turns_dropout_off(fw):
    """docs/design.md, "Conventions": models start in the mode each framework starts in (train, for both:
    ``nn.Module.training`` is True, ``nnx.Dropout`` starts non-deterministic), and
    ``.eval()`` turns dropout off in both; ``.train()`` turns it back on."""
    cfg = POST.replace(dropout=0.5)
    weights = random_weights(cfg, seed=17)
    model = fw.fresh(cfg, seed=18)
    _import(fw, model, weights)  # import_weights does not change the mode
    if fw.name == "torch":
        assert all(m.training for m in model.modules())
    else:
        dropouts = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
        assert dropouts and not any(d.deterministic for d in dropouts)

    ids, mask, _ = _padded_batch(cfg, [10, 7, 2], 10, seed=19)
    assert not np.array_equal(fw.run(model, ids, mask), fw.run(model, ids, mask))

    fw.set_mode(model, "eval")
    reference = fw.run(fw.from_weights(cfg.replace(dropout=0.0), weights), ids, mask)
    assert np.array_equal(fw.run(model, ids, mask), reference)
    assert np.array_equal(fw.run(model, ids, mask), reference)

    fw.set_mode(model, "train")
    assert not np.array_equal(fw.run(model, ids, mask), reference)


def test_both_frameworks_have_the_same_dropout_sites():
    """Mirrored modules: as many dropout modules, at the same places, with the same rate."""
    cfg = PRE.replace(dropout=0.25)
    tm = torch_impl.TransformerEncoder(cfg)
    jm = jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(0))
    torch_sites = {n: m.p for n, m in tm.named_modules() if isinstance(m, torch.nn.Dropout)}
    jax_sites = {
        ".".join(str(k) for k in path): m.rate
        for path, m in nnx.iter_modules(jm)
        if isinstance(m, nnx.Dropout)
    }
    assert torch_sites == jax_sites
    assert set(torch_sites.values()) == {0.25}


# ---------------------------------------------------------------------------------------------
# JAX: eager, jax.jit over nnx.split state, and nnx.jit give the same numbers


# Each case compiles twice (a few seconds on a CPU), so the cases cover the grid sparsely:
# each config, each backend and each kind of call appear at least once.
@pytest.mark.parametrize(
    ("cfg", "backend", "kwargs"),
    [
        pytest.param(POST, "math", {}, id="post_norm_sinusoidal-math-plain"),
        pytest.param(POST, "fused", {"is_causal": True}, id="post_norm_sinusoidal-fused-causal"),
        pytest.param(PRE, "math", {"return_attention": True}, id="pre_norm_learned-math-attention"),
        pytest.param(PRE, "fused", {}, id="pre_norm_learned-fused-plain"),
    ],
)
def test_jax_model_gives_the_same_numbers_eagerly_and_under_jit(cfg, backend, kwargs, device):
    model = jax_impl.from_weights(random_weights(cfg, seed=20), cfg, backend=backend)
    ids, mask, _ = _padded_batch(cfg, [10, 3, 0], 10, seed=21)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

    eager = model(ids, mask, **kwargs)
    graphdef, state = nnx.split(model)
    split_jit = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask, **kwargs))
    via_split = split_jit(state, ids, mask)
    via_nnx_jit = nnx.jit(lambda m, ids, mask: m(ids, mask, **kwargs))(model, ids, mask)

    tol = tolerance("float32", device)
    flat_eager = jax.tree.leaves(eager)
    for what, out in (("jax.jit over nnx.split", via_split), ("nnx.jit", via_nnx_jit)):
        flat = jax.tree.leaves(out)
        assert len(flat) == len(flat_eager)
        for i, (a, e) in enumerate(zip(flat, flat_eager, strict=True)):
            assert_close(np.asarray(a), np.asarray(e), tol, f"{what}, output {i}")


def test_nnx_jit_in_train_mode_draws_new_dropout_masks_on_every_call():
    """nnx.jit carries the dropout RNG state out of the compiled call, so, as eagerly, two
    calls in train mode differ."""
    cfg = POST.replace(dropout=0.5)
    model = jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(22))
    ids = jnp.asarray(np.random.default_rng(23).integers(0, cfg.vocab_size, (2, 8)), jnp.int32)
    run = nnx.jit(lambda m, ids: m(ids))
    assert not np.array_equal(np.asarray(run(model, ids)), np.asarray(run(model, ids)))
