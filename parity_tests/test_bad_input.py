"""Bad input gets a clear error: a ValueError (or a TypeError for a wrong dtype) whose message
names what was wrong, what was expected and what was got, in both frameworks alike.

``EncoderConfig`` is framework-neutral: it validates itself before either framework sees it,
so its tests run once, through each way a config is made (constructor, ``replace``,
``from_dict``, ``from_json``). Everything a model or an attention module is given is tested in
both frameworks, with each framework's own arrays.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import torch_impl
from parity_tests.helpers import build_pair, random_weights, tiny_config, to_numpy
from shared import BACKENDS, EncoderConfig, reference
from shared.inputs import Spec, check_inputs
from shared.tolerances import assert_close, tolerance

# ---------------------------------------------------------------------------------------------
# EncoderConfig

BASE = tiny_config(vocab_size=20, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8)


def _via_constructor(**fields):
    return EncoderConfig(**(dataclasses.asdict(BASE) | fields))


def _via_replace(**fields):
    return BASE.replace(**fields)


def _via_from_dict(**fields):
    return EncoderConfig.from_dict(dataclasses.asdict(BASE) | fields)


def _via_from_json(**fields):
    return EncoderConfig.from_json(json.dumps(dataclasses.asdict(BASE) | fields))


MAKERS = [
    pytest.param(_via_constructor, id="constructor"),
    pytest.param(_via_replace, id="replace"),
    pytest.param(_via_from_dict, id="from_dict"),
    pytest.param(_via_from_json, id="from_json"),
]


@pytest.mark.parametrize("make", MAKERS)
def test_d_model_not_divisible_by_n_heads_gives_the_exact_message(make):
    with pytest.raises(ValueError, match=r"^d_model=30 is not divisible by n_heads=4$"):
        make(d_model=30, n_heads=4)


BAD_FIELDS = [
    # non-positive sizes
    pytest.param({"vocab_size": 0}, "vocab_size=0 must be >= 1", id="vocab_size_zero"),
    pytest.param({"d_model": 0}, "d_model=0 must be >= 1", id="d_model_zero"),
    pytest.param({"n_heads": 0}, "n_heads=0 must be >= 1", id="n_heads_zero"),
    pytest.param({"d_ff": -4}, "d_ff=-4 must be >= 1", id="d_ff_negative"),
    pytest.param({"n_layers": 0}, "n_layers=0 must be >= 1", id="n_layers_zero"),
    pytest.param({"max_len": -1}, "max_len=-1 must be >= 1", id="max_len_negative"),
    pytest.param(
        {"type_vocab_size": -1}, "type_vocab_size=-1 must be >= 0", id="type_vocab_size_negative"
    ),
    # sizes that are not ints
    pytest.param({"d_model": 8.0}, "d_model=8.0 must be an int", id="d_model_float"),
    pytest.param({"n_layers": True}, "n_layers=True must be an int", id="n_layers_bool"),
    pytest.param({"vocab_size": "20"}, "vocab_size='20' must be an int", id="vocab_size_str"),
    # names
    pytest.param(
        {"activation": "swish"},
        "activation='swish' must be one of ('relu', 'gelu', 'gelu_tanh', 'silu')",
        id="unknown_activation",
    ),
    pytest.param(
        {"activation": "GELU"},
        "activation='GELU' must be one of ('relu', 'gelu', 'gelu_tanh', 'silu')",
        id="activation_wrong_case",
    ),
    pytest.param(
        {"positional": "rotary"},
        "positional='rotary' must be one of ('sinusoidal', 'learned', 'rope')",
        id="unknown_positional",
    ),
    # dropout outside [0, 1)
    pytest.param({"dropout": -0.1}, "dropout=-0.1 must lie in [0, 1)", id="dropout_negative"),
    pytest.param({"dropout": 1.0}, "dropout=1.0 must lie in [0, 1)", id="dropout_one"),
    pytest.param({"dropout": 1.5}, "dropout=1.5 must lie in [0, 1)", id="dropout_above_one"),
    pytest.param({"dropout": float("nan")}, "dropout=nan must lie in [0, 1)", id="dropout_nan"),
    pytest.param({"dropout": "0.1"}, "dropout='0.1' must be a number", id="dropout_str"),
    # layer norm epsilon
    pytest.param({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0 must be > 0", id="eps_zero"),
    # flags that are not bools
    pytest.param({"norm_first": 1}, "norm_first=1 must be a bool", id="norm_first_int"),
    pytest.param({"embed_norm": "yes"}, "embed_norm='yes' must be a bool", id="embed_norm_str"),
    pytest.param({"final_norm": None}, "final_norm=None must be a bool", id="final_norm_none"),
]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS)
def test_invalid_config_value_names_the_field_the_value_and_the_rule(make, fields, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make(**fields)


def test_unknown_field_in_from_dict_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("unknown EncoderConfig field(s) ['num_heads']")):
        EncoderConfig.from_dict({"d_model": 64, "num_heads": 4})
    with pytest.raises(
        ValueError,
        match=re.escape("known: ['activation', 'attention_bias', 'attn_head_dim', 'causal'"),
    ):
        EncoderConfig.from_dict({"num_heads": 4})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{d_model: 64}", "config is not valid JSON", id="not_json"),
        pytest.param('{"d_model": 64', "config is not valid JSON", id="truncated_json"),
        pytest.param("[64, 4]", "config must be a JSON object, got list", id="json_list"),
        pytest.param('"gelu"', "config must be a JSON object, got str", id="json_string"),
    ],
)
def test_invalid_json_config_is_rejected(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EncoderConfig.from_json(text)


def test_from_dict_rejects_a_non_dict():
    with pytest.raises(ValueError, match=re.escape("config must be a JSON object, got list")):
        EncoderConfig.from_dict([("d_model", 64)])


# ---------------------------------------------------------------------------------------------
# Both frameworks: the model's and attention module's arguments


@dataclasses.dataclass(frozen=True)
class Framework:
    name: str

    def model(self, cfg: EncoderConfig, **kwargs):
        if self.name == "torch":
            torch.manual_seed(0)
            return torch_impl.TransformerEncoder(cfg, **kwargs).eval()
        model = jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(0), **kwargs)
        model.eval()
        return model

    def mha(self, d_model: int, n_heads: int, **kwargs):
        if self.name == "torch":
            return torch_impl.MultiHeadAttention(d_model, n_heads, **kwargs)
        return jax_impl.MultiHeadAttention(d_model, n_heads, rngs=nnx.Rngs(0), **kwargs)

    def array(self, a: np.ndarray):
        """The framework's own array (JAX without x64 keeps 32-bit integers)."""
        if self.name == "torch":
            return torch.as_tensor(a)
        if a.dtype == np.int64:
            a = a.astype(np.int32)
        return jnp.asarray(a)

    def call(self, model, ids, mask=None, types=None, **kwargs):
        def native(a):
            return None if a is None else self.array(np.asarray(a))

        if self.name == "torch":
            with torch.no_grad():
                return model(native(ids), native(mask), native(types), **kwargs)
        return model(native(ids), native(mask), native(types), **kwargs)


@pytest.fixture(params=["torch", "jax"])
def fw(request) -> Framework:
    return Framework(request.param)


# type_vocab_size > 0 and learned positions, so that every argument can be checked.
CFG = BASE.replace(type_vocab_size=2, positional="learned")
B, T = 2, 5


def _ids(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


def _with(a: np.ndarray, index, value) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


GOOD_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
GOOD_TYPES = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])

BAD_CALLS = [
    # input_ids
    pytest.param(
        {"ids": _ids().astype(np.float32)},
        TypeError,
        "input_ids must be integers, got dtype kind 'f' (shape (2, 5))",
        id="ids_float",
    ),
    pytest.param(
        {"ids": _ids() > 3},
        TypeError,
        "input_ids must be integers, got dtype kind 'b' (shape (2, 5))",
        id="ids_bool",
    ),
    pytest.param(
        {"ids": _ids()[0]},
        ValueError,
        "input_ids must have shape (batch, seq_len), got shape (5,)",
        id="ids_1d",
    ),
    pytest.param(
        {"ids": _ids()[:, :, None]},
        ValueError,
        "input_ids must have shape (batch, seq_len), got shape (2, 5, 1)",
        id="ids_3d",
    ),
    pytest.param(
        {"ids": np.zeros((2, 0), np.int64)},
        ValueError,
        "input_ids has seq_len 0; need at least one token",
        id="ids_empty_sequence",
    ),
    pytest.param(
        {"ids": _with(np.full((B, T), 7), (1, 3), -1)},
        ValueError,
        "input_ids must lie in [0, vocab_size=20), got min -1, max 7",
        id="ids_negative",
    ),
    pytest.param(
        {"ids": _with(np.full((B, T), 7), (0, 4), 20)},
        ValueError,
        "input_ids must lie in [0, vocab_size=20), got min 7, max 20",
        id="ids_equal_to_vocab_size",
    ),
    pytest.param(
        {"ids": np.zeros((1, 9), np.int64)},
        ValueError,
        "seq_len=9 exceeds max_len=8: learned positions cannot extend beyond the table",
        id="seq_len_beyond_learned_positions",
    ),
    # attention_mask
    pytest.param(
        {"mask": np.ones((2, 6), np.int64)},
        ValueError,
        "attention_mask must have the shape of input_ids (2, 5), got (2, 6)",
        id="mask_too_long",
    ),
    pytest.param(
        {"mask": np.ones(5, np.int64)},
        ValueError,
        "attention_mask must have the shape of input_ids (2, 5), got (5,)",
        id="mask_1d",
    ),
    pytest.param(
        {"mask": np.ones((2, 1, 1, 5), bool)},
        ValueError,
        "attention_mask must have the shape of input_ids (2, 5), got (2, 1, 1, 5)",
        id="mask_4d_general_mask",
    ),
    pytest.param(
        {"mask": GOOD_MASK.astype(np.float32)},
        TypeError,
        "attention_mask must be bool or 0/1 integers (1 = real token), got dtype kind 'f'",
        id="mask_float",
    ),
    pytest.param(
        {"mask": _with(GOOD_MASK, (1, 0), 2)},
        ValueError,
        "attention_mask must hold only 0 and 1 (1 = real token), got [2]",
        id="mask_value_two",
    ),
    pytest.param(
        {"mask": _with(GOOD_MASK, (1, 4), -1)},
        ValueError,
        "attention_mask must hold only 0 and 1 (1 = real token), got [-1]",
        id="mask_value_minus_one",
    ),
    # token_type_ids
    pytest.param(
        {"types": GOOD_TYPES[:, :4]},
        ValueError,
        "token_type_ids must have the shape of input_ids (2, 5), got (2, 4)",
        id="types_too_short",
    ),
    pytest.param(
        {"types": _with(GOOD_TYPES, (0, 1), 2)},
        ValueError,
        "token_type_ids must lie in [0, type_vocab_size=2), got min 0, max 2",
        id="types_equal_to_type_vocab_size",
    ),
    pytest.param(
        {"types": _with(GOOD_TYPES, (1, 1), -1)},
        ValueError,
        "token_type_ids must lie in [0, type_vocab_size=2), got min -1, max 1",
        id="types_negative",
    ),
    pytest.param(
        {"types": GOOD_TYPES.astype(np.float32)},
        TypeError,
        "token_type_ids must be integers, got dtype kind 'f'",
        id="types_float",
    ),
    pytest.param(
        {"types": GOOD_TYPES, "cfg": CFG.replace(type_vocab_size=0)},
        ValueError,
        "token_type_ids given, but the config has type_vocab_size=0",
        id="types_without_type_vocab",
    ),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_CALLS)
def test_bad_call_argument_names_what_was_expected_and_got(fw, args, error, message):
    model = fw.model(args.get("cfg", CFG))
    with pytest.raises(error, match=re.escape(message)):
        fw.call(model, args.get("ids", _ids()), args.get("mask"), args.get("types"))


def test_jax_checks_id_values_of_host_arrays_whatever_the_integer_dtype():
    """``jnp.take`` would fill or clamp out-of-range ids silently; eager calls check the values
    of host arrays (NumPy int64, uint8, a list, a JAX int32 array on one CPU device), whichever
    integer dtype comes in. Arrays sharded over devices are checked for shape and dtype only
    (test_parallel.py shows it)."""
    model = Framework("jax").model(CFG)
    ids = np.full((B, T), 25)
    host = (ids, ids.astype(np.uint8), ids.tolist(), jax.device_put(ids.astype(np.int32)))
    for array in host:
        with pytest.raises(ValueError, match=re.escape("got min 25, max 25")):
            model(array)


def test_torch_reads_values_of_host_tensors_only_and_shapes_of_any():
    """Values are read only from NumPy arrays, lists and CPU tensors; for any other device
    (here the ``meta`` device, which holds no values at all, so a read would raise) validation
    sees the shape and dtype kind, which are still checked. A CUDA tensor or a DTensor is
    treated alike, so a call never waits on the device nor gathers a sharded input."""
    ids = np.full((B, T), 25)
    for host in (ids, ids.tolist(), torch.as_tensor(ids)):
        assert isinstance(torch_impl.encoder._values(host), np.ndarray)
    on_device = torch.full((B, T), 25, device="meta")
    assert torch_impl.encoder._values(on_device) == Spec((B, T), "i")
    with pytest.raises(ValueError, match=re.escape("got shape (5,)")):
        check_inputs(CFG, torch_impl.encoder._values(on_device[0]))


# ---------------------------------------------------------------------------------------------
# Under jax.jit: shapes and dtypes are checked while tracing; values cannot be


def _jitted(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return lambda ids, mask=None: run(state, ids, mask)


@pytest.mark.parametrize(
    ("ids", "mask", "error", "message"),
    [
        pytest.param(
            _ids()[0].astype(np.int32),
            None,
            ValueError,
            "input_ids must have shape (batch, seq_len), got shape (5,)",
            id="ids_1d",
        ),
        pytest.param(
            _ids().astype(np.float32),
            None,
            TypeError,
            "input_ids must be integers, got dtype kind 'f'",
            id="ids_float",
        ),
        pytest.param(
            np.zeros((1, 9), np.int32),
            None,
            ValueError,
            "seq_len=9 exceeds max_len=8",
            id="seq_len_beyond_learned_positions",
        ),
        pytest.param(
            _ids().astype(np.int32),
            np.ones((2, 6), np.int32),
            ValueError,
            "attention_mask must have the shape of input_ids (2, 5), got (2, 6)",
            id="mask_wrong_shape",
        ),
        pytest.param(
            _ids().astype(np.int32),
            GOOD_MASK.astype(np.float32),
            TypeError,
            "attention_mask must be bool or 0/1 integers",
            id="mask_float",
        ),
    ],
)
def test_under_jax_jit_bad_shapes_and_dtypes_still_raise(ids, mask, error, message):
    run = _jitted(Framework("jax").model(CFG))
    with pytest.raises(error, match=re.escape(message)):
        run(jnp.asarray(ids), None if mask is None else jnp.asarray(mask))


def test_under_jax_jit_id_values_cannot_be_checked_and_show_up_as_nan():
    """While tracing, ids are abstract: their values are unknown, so an out-of-range id is not
    (cannot be) caught. Documented behaviour: ``nnx.Embed`` reads rows with ``jnp.take``, whose
    default "fill" mode gives NaN for an out-of-range row, and attention spreads the NaN to
    every position of that sequence; other sequences of the batch are unaffected. Validate ids
    outside ``jit`` (or call the model eagerly) when they come from untrusted input."""
    model = Framework("jax").model(CFG)
    ids = _ids(1).astype(np.int32)
    ids[1, 2] = CFG.vocab_size  # out of range, in the second sequence only
    out = np.asarray(_jitted(model)(jnp.asarray(ids)))  # no error
    assert np.all(np.isnan(out[1]))
    assert np.all(np.isfinite(out[0]))
    with pytest.raises(ValueError, match=re.escape("got min")):
        model(jnp.asarray(ids))  # the same call, eagerly, is caught


def test_under_jax_jit_mask_values_cannot_be_checked_and_nonzero_counts_as_real(device):
    """A mask value of 2 is an error eagerly, but under ``jit`` it is only cast to bool: any
    non-zero value counts as a real token (documented; same outputs as 1)."""
    model = Framework("jax").model(CFG)
    ids = jnp.asarray(_ids(2).astype(np.int32))
    run = _jitted(model)
    with_two = run(ids, jnp.asarray(_with(GOOD_MASK, (1, 0), 2).astype(np.int32)))
    with_one = run(ids, jnp.asarray(GOOD_MASK.astype(np.int32)))
    assert_close(with_two, with_one, tolerance("float32", device), "mask with a 2 vs with a 1")


# ---------------------------------------------------------------------------------------------
# Positions past max_len


def test_sinusoidal_positions_extend_past_max_len_and_match_the_oracle(device, torch_device):
    cfg = BASE.replace(positional="sinusoidal")  # max_len=8
    weights = random_weights(cfg, seed=3)
    tm, jm = build_pair(cfg, weights, torch_device=torch_device)
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 3 * cfg.max_len))
    mask = np.ones_like(ids)
    mask[1, 20:] = 0
    expected = reference.forward(weights, cfg, ids, mask).last_hidden_state
    tol = tolerance("float32", device)
    with torch.no_grad():
        h_t = tm(
            torch.as_tensor(ids, device=torch_device), torch.as_tensor(mask, device=torch_device)
        )
    assert_close(to_numpy(h_t), expected, tol, "torch, T = 3 * max_len")
    assert_close(to_numpy(jm(ids.astype(np.int32), mask.astype(np.int32))), expected, tol, "jax")


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention's general mask (True = may attend), constructor arguments


MHA_MASKS = [
    pytest.param(
        np.ones((B, 1, T, T), np.int32),
        None,
        TypeError,
        "attention mask must be boolean (True = may attend), got dtype kind 'i'",
        id="integer_mask",
    ),
    pytest.param(
        np.zeros((B, 1, T, T), np.float32),
        None,
        TypeError,
        "attention mask must be boolean (True = may attend), got dtype kind 'f'",
        id="additive_float_mask",
    ),
    pytest.param(
        np.ones((B, 1, T, T + 1), bool),
        None,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 5), got (2, 1, 5, 6)",
        id="key_axis_too_long",
    ),
    pytest.param(
        np.ones((B, T, T), bool),
        None,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 5), got (2, 5, 5)",
        id="mask_3d",
    ),
    pytest.param(
        np.ones((3, 1, T, T), bool),
        None,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 5), got (3, 1, 5, 5)",
        id="batch_mismatch",
    ),
    pytest.param(
        np.ones((1, 3, T, T), bool),
        None,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 5), got (1, 3, 5, 5)",
        id="head_mismatch",
    ),
    pytest.param(
        np.ones((B, T), bool),
        None,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 5), got (2, 5)",
        id="padding_mask_given_as_general_mask",
    ),
    pytest.param(
        np.ones((B, 1, T, T), bool),
        7,
        ValueError,
        "attention mask must have shape (B|1, H|1, T|1, S) = (2|1, 2|1, 5|1, 7), got (2, 1, 5, 5)",
        id="cross_attention_mask_sized_for_self_attention",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("mask", "context_len", "error", "message"), MHA_MASKS)
def test_multi_head_attention_rejects_a_bad_general_mask(
    fw, backend, mask, context_len, error, message
):
    mha = fw.mha(8, 2, backend=backend)
    rng = np.random.default_rng(5)
    x = fw.array(rng.standard_normal((B, T, 8)).astype(np.float32))
    context = None
    if context_len is not None:
        context = fw.array(rng.standard_normal((B, context_len, 8)).astype(np.float32))
    with pytest.raises(error, match=re.escape(message)):
        mha(x, context, mask=fw.array(mask))


def test_multi_head_attention_d_model_not_divisible_by_n_heads(fw):
    with pytest.raises(ValueError, match=r"^d_model=30 is not divisible by n_heads=4$"):
        fw.mha(30, 4)


@pytest.mark.parametrize("backend", ["Flash", "Math", "sdpa", ""])
def test_unknown_backend_is_rejected_by_model_and_attention(fw, backend):
    message = f"backend={backend!r} must be one of ('math', 'fused', 'flash')"
    with pytest.raises(ValueError, match=re.escape(message)):
        fw.model(CFG, backend=backend)
    with pytest.raises(ValueError, match=re.escape(message)):
        fw.mha(8, 2, backend=backend)


def test_jax_float64_model_without_x64_explains_what_to_do():
    with jax.enable_x64(False), pytest.raises(ValueError, match="jax_enable_x64"):
        jax_impl.TransformerEncoder(CFG, dtype=jnp.float64, rngs=nnx.Rngs(0))
