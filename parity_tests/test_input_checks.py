"""What the models are given, checked and normalised the same way in both frameworks.

* Every gather from a table (token ids, token types, positions however they are computed)
  raises one named ``ValueError`` for an out-of-range index in a host array, the same
  message in PyTorch and JAX, before either framework reads a row. RoBERTa's positions are
  checked by value against transformers' own numbering and its refusal.
* Under ``jax.jit`` values cannot be read: what happens then is documented and tested.
* Integer arguments of every NumPy integer dtype give the numbers of int64 ones, including
  lengths past a narrow dtype's range (RoBERTa's positions are a cumulative sum).
* ``jax_impl`` refuses float64 without ``jax_enable_x64`` in every constructor and function
  that takes a ``dtype``, with one message.
* Imported weights must be finite (named refusal, explicit opt-out); saving onto a
  directory is a named error that leaves nothing behind.
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl
import jax_impl.attention
import jax_impl.checkpoint
import jax_impl.encoder
import jax_impl.native
import jax_impl.precision
import jax_impl.weights
import torch_impl
import torch_impl.checkpoint
from parity_tests.helpers import build_pair, random_weights, to_numpy
from shared import EncoderConfig, reference
from shared.atomic import OutputPathError
from shared.inputs import INDEX_DTYPE, check_inputs, position_ids
from shared.layouts import CheckpointError
from shared.tolerances import assert_close, tolerance

# Every integer dtype NumPy has (int8 ... uint64; the platform aliases collapse onto these).
INTEGER_DTYPES = sorted(
    {np.dtype(c) for c in np.typecodes["AllInteger"]}, key=lambda d: (d.itemsize, d.kind)
)


def _raised(call) -> Exception:
    try:
        call()
    except Exception as e:  # the test compares what each framework raised
        return e
    raise AssertionError("no exception was raised")


def _both_raise_the_same(tm, jm, ids, mask=None, types=None) -> str:
    """Call both models eagerly on host arrays; both must raise the same ValueError."""
    with torch.no_grad():
        e_t = _raised(lambda: tm(ids, mask, types))
    e_j = _raised(lambda: jm(ids, mask, types))
    assert type(e_t) is ValueError and type(e_j) is ValueError, (repr(e_t), repr(e_j))
    assert str(e_t) == str(e_j)
    return str(e_t)


# ---------------------------------------------------------------------------------------------
# RoBERTa's positions: the filed case, against transformers

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

MAX_POSITIONS, PAD = 12, 1  # transformers' max_position_embeddings and pad_token_id


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """``(transformers RobertaModel, format weights, EncoderConfig)`` of a tiny RoBERTa whose
    position table has 12 rows: real tokens take rows 2..11, so at most 10 fit."""
    from shared import hf

    config = transformers.RobertaConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        pad_token_id=PAD,
        layer_norm_eps=1e-5,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.RobertaModel(config, add_pooling_layer=False).eval()
    folder = tmp_path_factory.mktemp("roberta")
    model.save_pretrained(folder)
    weights, cfg = hf.load(folder)
    return model, weights, cfg


def _real_ids(n_real: int, n_pad: int = 0, *, left: bool = False, seed: int = 0) -> np.ndarray:
    """One row: ``n_real`` ids that are not the pad id, and ``n_pad`` pads."""
    real = np.random.default_rng(seed).integers(3, 40, n_real)
    pads = np.full(n_pad, PAD)
    return np.concatenate([pads, real] if left else [real, pads])[None]


def test_roberta_11_real_tokens_in_12_rows_is_a_named_error_in_both_as_transformers_refuses(
    roberta,
):
    hf_model, weights, cfg = roberta
    ids = _real_ids(11)  # positions 2..12: row 12 does not exist
    with pytest.raises((IndexError, RuntimeError)), torch.no_grad():  # transformers refuses
        hf_model(torch.as_tensor(ids))
    tm, jm = build_pair(cfg, weights)
    message = _both_raise_the_same(tm, jm, ids)
    assert message == (
        "position ids must lie in [0, max_len=12), got min 2, max 12: with position_pad_id=1, "
        "real (non-pad) tokens are numbered from 2, so a row holds at most "
        "max_len - position_pad_id - 1 = 10 of them; a row of input_ids holds 11"
    )
    # the host check also covers a JAX array on one CPU device and a CPU tensor
    with pytest.raises(ValueError, match=re.escape("got min 2, max 12")):
        jm(jnp.asarray(ids, dtype=jnp.int32))
    with pytest.raises(ValueError, match=re.escape("got min 2, max 12")), torch.no_grad():
        tm(torch.as_tensor(ids))


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param(_real_ids(10), id="10_real_the_limit"),
        pytest.param(_real_ids(10, 1), id="10_real_1_pad_right"),
        pytest.param(_real_ids(10, 1, left=True), id="10_real_1_pad_left"),
        pytest.param(_real_ids(6, 5), id="6_real_5_pad"),
    ],
)
def test_roberta_rows_that_fit_match_transformers(roberta, ids, device):
    hf_model, weights, cfg = roberta
    mask = (ids != PAD).astype(np.int64)
    with torch.no_grad():
        expected = hf_model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    expected = expected.last_hidden_state.numpy()
    tm, jm = build_pair(cfg, weights)
    real = mask.astype(bool)  # padded outputs are meaningless by contract
    tol = tolerance("float32", device)
    with torch.no_grad():
        h_t = to_numpy(tm(ids, mask))
    assert_close(h_t[real], expected[real], tol, "torch vs transformers")
    assert_close(to_numpy(jm(ids, mask))[real], expected[real], tol, "jax vs transformers")


def test_position_ids_number_tokens_as_transformers_does(roberta):
    """``shared.inputs.position_ids`` (what the check reads) against transformers' own
    ``create_position_ids_from_input_ids``, over rows with pads anywhere."""
    _, _, cfg = roberta
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 40, (6, 11))
    ids[rng.random(ids.shape) < 0.3] = PAD
    create = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    expected = create.create_position_ids_from_input_ids(torch.as_tensor(ids), PAD).numpy()
    np.testing.assert_array_equal(position_ids(cfg, ids), expected)


# ---------------------------------------------------------------------------------------------
# Every gather, one named error in both frameworks

TEXT = EncoderConfig(
    vocab_size=50,
    d_model=16,
    n_heads=2,
    d_ff=32,
    n_layers=1,
    max_len=8,
    dropout=0.0,
    positional="learned",
    type_vocab_size=3,
)
ROBERTA = TEXT.replace(position_pad_id=1, type_vocab_size=1)
IDS = np.random.default_rng(2).integers(2, TEXT.vocab_size, (2, 6))


def _set(a, index, value, dtype=None):
    a = np.array(a, dtype=dtype)
    a[index] = value
    return a


GATHERS = [
    # (config, ids, token types, message)
    pytest.param(
        TEXT,
        _set(IDS, (1, 2), 50),
        None,
        "input_ids must lie in [0, vocab_size=50), got min ",
        id="token_id_equal_to_vocab_size",
    ),
    pytest.param(
        TEXT,
        _set(IDS, (0, 0), -3),
        None,
        "input_ids must lie in [0, vocab_size=50), got min -3",
        id="token_id_negative",
    ),
    pytest.param(
        TEXT,
        _set(IDS, (0, 1), 2**32 + 7, np.uint64),
        None,
        f"input_ids must lie in [0, vocab_size=50), got min {IDS.min()}, max {2**32 + 7}",
        id="token_id_uint64_past_int32_not_wrapped",
    ),
    pytest.param(
        TEXT,
        _set(IDS, (0, 1), np.iinfo(np.uint64).max, np.uint64),
        None,
        f"got min {IDS.min()}, max {np.iinfo(np.uint64).max}",
        id="token_id_uint64_max",
    ),
    pytest.param(
        TEXT,
        IDS,
        _set(np.zeros_like(IDS), (1, 5), 3),
        "token_type_ids must lie in [0, type_vocab_size=3), got min 0, max 3",
        id="token_type_equal_to_type_vocab_size",
    ),
    pytest.param(
        TEXT,
        IDS,
        _set(np.zeros_like(IDS), (1, 5), 2**31, np.uint32),
        f"token_type_ids must lie in [0, type_vocab_size=3), got min 0, max {2**31}",
        id="token_type_uint32_past_int32",
    ),
    pytest.param(
        TEXT,
        np.ones((1, 9), np.int64),
        None,
        "seq_len=9 exceeds max_len=8: learned positions cannot extend beyond the table",
        id="learned_positions_by_shape",
    ),
    pytest.param(
        ROBERTA,
        _set(np.full((2, 7), 5), (1, slice(None)), 1),
        None,
        "position ids must lie in [0, max_len=8), got min 1, max 8",
        id="roberta_positions_7_real_in_8_rows",
    ),
]


@pytest.mark.parametrize(("cfg", "ids", "types", "message"), GATHERS)
def test_every_gather_out_of_range_is_one_named_error_in_both(cfg, ids, types, message):
    tm, jm = build_pair(cfg, random_weights(cfg, seed=1))
    assert message in _both_raise_the_same(tm, jm, ids, None, types)


@pytest.fixture(scope="module")
def text_pair():
    return build_pair(TEXT, random_weights(TEXT, seed=1))


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_each_integer_dtypes_extreme_values_are_reported_as_they_are(dtype, text_pair):
    """The smallest and largest value of every integer dtype, as a token id and as a token
    type: the same named error in both, with the value as Python reads it (never wrapped)."""
    tm, jm = text_pair
    info = np.iinfo(dtype)
    extremes = [v for v in (int(info.min), int(info.max)) if not 0 <= v < TEXT.vocab_size]
    assert extremes  # every dtype's max is past the tables
    for value in extremes:
        ids = IDS.astype(dtype)
        ids[0, 0] = value
        listed = [v for row in ids.tolist() for v in row]  # Python ints
        message = _both_raise_the_same(tm, jm, ids)
        expected = f"got min {min(listed)}, max {max(listed)}"
        assert message == f"input_ids must lie in [0, vocab_size=50), {expected}"
        types = np.zeros(IDS.shape, dtype)
        types[1, 1] = value
        listed = [v for row in types.tolist() for v in row]
        message = _both_raise_the_same(tm, jm, IDS.astype(dtype), None, types)
        expected = f"got min {min(listed)}, max {max(listed)}"
        assert message == f"token_type_ids must lie in [0, type_vocab_size=3), {expected}"


def test_roberta_positions_at_the_limit_run_in_both_and_one_more_is_refused(device):
    """max_len=8, pad 1: six real tokens take rows 2..7 and run (the oracle's numbers, uint8
    ids); a seventh is refused by the host check alone."""
    weights = random_weights(ROBERTA, seed=1)
    ids = np.array([[5, 6, 7, 8, 9, 10], [1, 1, 5, 5, 5, 5]], np.uint8)
    mask = (ids != PAD).astype(np.int64)
    expected = reference.forward(weights, ROBERTA, ids.astype(np.int64), mask).last_hidden_state
    tm, jm = build_pair(ROBERTA, weights)
    tol = tolerance("float32", device)
    real = mask.astype(bool)
    with torch.no_grad():
        assert_close(to_numpy(tm(ids, mask))[real], expected[real], tol, "torch at the limit")
    assert_close(to_numpy(jm(ids, mask))[real], expected[real], tol, "jax at the limit")
    with pytest.raises(ValueError, match=r"a row of input_ids holds 7$"):
        check_inputs(ROBERTA, np.full((1, 7), 5))


def test_vit_patch_positions_cannot_leave_their_table():
    """ViT's positions are 0..N for N patches: the config ties ``max_len`` to N + 1 and the
    pixel shape is checked exactly, so no image can ask for a row past the table."""
    with pytest.raises(ValueError, match=re.escape("max_len=10 must be n_patches + 1 = 5")):
        EncoderConfig(
            vocab_size=1, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=10,
            positional="learned", image_size=8, patch_size=4,
        )  # fmt: skip
    vit = EncoderConfig(
        vocab_size=1, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=5,
        positional="learned", image_size=8, patch_size=4,
    )  # fmt: skip
    tm, jm = build_pair(vit, random_weights(vit, seed=0))
    bigger = np.zeros((1, 3, 12, 12), np.float32)  # 9 patches would need 10 rows
    with torch.no_grad():
        e_t = _raised(lambda: tm(pixel_values=bigger))
    e_j = _raised(lambda: jm(pixel_values=bigger))
    assert (
        str(e_t) == str(e_j) == "pixel_values must have shape (batch, 3, 8, 8), got (1, 3, 12, 12)"
    )


# ---------------------------------------------------------------------------------------------
# Under jax.jit: values cannot be read (documented in the README's mask section)


def _jitted(model):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    return lambda ids: run(state, ids)


def test_under_jax_jit_a_position_past_the_table_reads_as_nan_in_its_row_only():
    """As for token ids: ``nnx.Embed`` gathers with ``jnp.take``'s fill mode, so a position
    row that does not exist is NaN, and attention spreads it over that sequence only. The
    shape check (T <= max_len) still runs while tracing; the eager call is refused."""
    _, jm = build_pair(ROBERTA, random_weights(ROBERTA, seed=3))
    ids = np.full((2, 7), 5, np.int32)
    ids[0, 1:] = PAD  # row 0: one real token; row 1: 7 real tokens need row 8 of 8
    out = np.asarray(_jitted(jm)(jnp.asarray(ids)))
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[0]))
    with pytest.raises(ValueError, match=re.escape("position ids must lie in [0, max_len=8)")):
        jm(jnp.asarray(ids))
    with pytest.raises(ValueError, match=re.escape("seq_len=9 exceeds max_len=8")):
        _jitted(jm)(jnp.ones((1, 9), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Integer dtypes: normalised once, to INDEX_DTYPE, at the boundary


def test_index_dtype_is_what_both_boundaries_produce():
    ids = np.arange(6, dtype=np.uint16).reshape(2, 3)
    assert torch_impl.encoder._index(ids, torch.device("cpu")).dtype == torch.int32
    assert jax_impl.encoder._index(ids).dtype == jnp.int32
    assert np.dtype("int32") == INDEX_DTYPE


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_every_integer_dtype_gives_the_numbers_of_int64(dtype, device):
    """ids, token types and a 0/1 mask all in ``dtype``: the oracle's numbers (int64 ids)."""
    cfg = TEXT.replace(vocab_size=120 if np.iinfo(dtype).max >= 120 else 100)
    weights = random_weights(cfg, seed=4)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, cfg.vocab_size, (2, 8))
    ids[0, 0] = cfg.vocab_size - 1  # the top row of the table
    types = rng.integers(0, cfg.type_vocab_size, (2, 8))
    mask = np.ones((2, 8), np.int64)
    mask[1, 5:] = 0
    expected = reference.forward(weights, cfg, ids, mask, types).last_hidden_state
    tm, jm = build_pair(cfg, weights)
    narrow = [a.astype(dtype) for a in (ids, mask, types)]
    tol = tolerance("float32", device)
    with torch.no_grad():
        assert_close(to_numpy(tm(*narrow)), expected, tol, f"torch, {dtype}")
    assert_close(to_numpy(jm(*narrow)), expected, tol, f"jax, {dtype}")


def _narrow_limit_cases():
    """(dtype, T): a RoBERTa row longer than the dtype's largest value, so that a cumulative
    sum of positions in that dtype would wrap."""
    for dtype in INTEGER_DTYPES:
        top = np.iinfo(dtype).max
        if top < 2**16:
            yield pytest.param(dtype, int(top) + 3, id=f"{dtype}-T{int(top) + 3}")


@pytest.mark.parametrize(("dtype", "t"), list(_narrow_limit_cases()))
def test_positions_past_a_narrow_dtype_limit_do_not_wrap(dtype, t):
    """Ids in ``dtype`` (values fit), T = the dtype's max + 3: RoBERTa's positions run past
    the dtype's range. The embeddings of both models (what the positions feed) are compared
    with NumPy on int64 positions; int8 and uint8 also run the whole model vs the oracle."""
    cfg = ROBERTA.replace(max_len=t + 2, vocab_size=100)
    weights = random_weights(cfg, seed=6)
    rng = np.random.default_rng(7)
    ids = rng.integers(2, 100, (1, t))
    ids[0, : t // 3] = PAD  # left padding: real tokens still number more than the dtype holds
    ids[0, -1] = PAD
    narrow = ids.astype(dtype)
    positions = np.cumsum(ids != PAD, axis=1) * (ids != PAD) + PAD  # int64
    expected = (
        weights["embeddings.token.weight"][ids]
        + weights["embeddings.position.weight"][positions]
        + weights["embeddings.token_type.weight"][np.zeros_like(ids)]
    )
    tm, jm = build_pair(cfg, weights)
    tol = tolerance("float32", "cpu")
    with torch.no_grad():
        e_t, _ = tm.embeddings(torch_impl.encoder._index(narrow, torch.device("cpu")))
    e_j, _ = jm.embeddings(jax_impl.encoder._index(narrow))
    assert_close(to_numpy(e_t), expected, tol, f"torch embeddings, {dtype}, T={t}")
    assert_close(to_numpy(e_j), expected, tol, f"jax embeddings, {dtype}, T={t}")
    if t < 300:
        mask = (ids != PAD).astype(dtype)
        whole = reference.forward(weights, cfg, ids, mask).last_hidden_state
        real = ids != PAD
        with torch.no_grad():
            assert_close(to_numpy(tm(narrow, mask))[real], whole[real], tol, "torch model")
        assert_close(to_numpy(jm(narrow, mask))[real], whole[real], tol, "jax model")


def test_narrow_device_arrays_under_jax_jit_are_cast_too():
    cfg = TEXT
    _, jm = build_pair(cfg, random_weights(cfg, seed=8))
    ids = IDS.astype(np.uint8)
    eager = np.asarray(jm(ids))
    graphdef, state = nnx.split(jm)
    run = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
    assert_close(
        np.asarray(run(state, jnp.asarray(ids))), eager, tolerance("float32", "cpu"), "jit"
    )


# ---------------------------------------------------------------------------------------------
# float64 without x64: every jax_impl constructor and function that takes a dtype

SMALL = TEXT.replace(type_vocab_size=0)
VIT = EncoderConfig(
    vocab_size=1, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=5,
    positional="learned", image_size=8, patch_size=4,
)  # fmt: skip


def _rngs():
    return nnx.Rngs(0)


DTYPE_TAKERS = {
    "jax_impl.attention.MultiHeadAttention": lambda d: jax_impl.MultiHeadAttention(
        8, 2, dtype=d, rngs=_rngs()
    ),
    "jax_impl.attention.linear": lambda d: jax_impl.attention.linear(4, 4, dtype=d, rngs=_rngs()),
    "jax_impl.attention.RMSNorm": lambda d: jax_impl.attention.RMSNorm(4, 1e-6, dtype=d),
    "jax_impl.attention.fused_kernel": lambda d: jax_impl.attention.fused_kernel(d, 8),
    "jax_impl.encoder.layer_norm": lambda d: jax_impl.encoder.layer_norm(SMALL, d, _rngs()),
    "jax_impl.encoder.PatchEmbeddings": lambda d: jax_impl.encoder.PatchEmbeddings(
        VIT, dtype=d, rngs=_rngs()
    ),
    "jax_impl.encoder.Embeddings": lambda d: jax_impl.Embeddings(SMALL, dtype=d, rngs=_rngs()),
    "jax_impl.encoder.TokenEmbeddings": lambda d: jax_impl.encoder.TokenEmbeddings(
        SMALL, dtype=d, rngs=_rngs()
    ),
    "jax_impl.encoder.PatchProjection": lambda d: jax_impl.encoder.PatchProjection(
        VIT, dtype=d, rngs=_rngs()
    ),
    "jax_impl.encoder.FeedForward": lambda d: jax_impl.FeedForward(SMALL, dtype=d, rngs=_rngs()),
    "jax_impl.encoder.EncoderLayer": lambda d: jax_impl.EncoderLayer(SMALL, dtype=d, rngs=_rngs()),
    "jax_impl.encoder.Encoder": lambda d: jax_impl.Encoder(SMALL, dtype=d, rngs=_rngs()),
    "jax_impl.encoder.TransformerEncoder": lambda d: jax_impl.TransformerEncoder(
        SMALL, dtype=d, rngs=_rngs()
    ),
    "jax_impl.native.native_attention": lambda d: jax_impl.native.native_attention(
        8, 2, dtype=d, rngs=_rngs()
    ),
    "jax_impl.native.NativeEncoderLayer": lambda d: jax_impl.native.NativeEncoderLayer(
        SMALL, dtype=d, rngs=_rngs()
    ),
    "jax_impl.native.NativeEncoder": lambda d: jax_impl.native.NativeEncoder(
        SMALL, dtype=d, rngs=_rngs()
    ),
    "jax_impl.native.native_encoder": lambda d: jax_impl.native.native_encoder(
        SMALL, dtype=d, rngs=_rngs()
    ),
    "jax_impl.weights.from_weights": lambda d: jax_impl.from_weights(
        random_weights(SMALL), SMALL, dtype=d
    ),
    "jax_impl.weights.load": None,  # needs a file: the test writes one
    "jax_impl.checkpoint.load_sharded": None,  # needs a folder: the test writes one
    "jax_impl.precision.check_dtype": jax_impl.precision.check_dtype,
}


def _public_dtype_takers() -> set[str]:
    """Every public function and class of jax_impl's modules with a ``dtype`` parameter."""
    import pkgutil

    found = set()
    for info in pkgutil.iter_modules(jax_impl.__path__):
        module = __import__(f"jax_impl.{info.name}", fromlist=["_"])
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj):
                target = obj.__init__
            elif callable(obj):
                target = getattr(obj, "__wrapped__", obj)  # functools.cache
            else:
                continue
            if "dtype" in inspect.signature(target).parameters:
                found.add(f"{module.__name__}.{name}")
    return found


def test_the_table_below_names_every_public_dtype_taker_of_jax_impl():
    assert _public_dtype_takers() == set(DTYPE_TAKERS)


X64_MESSAGE = "dtype float64 needs jax.config.update('jax_enable_x64', True) first"


@pytest.mark.parametrize("name", sorted(DTYPE_TAKERS))
def test_float64_without_x64_is_refused_with_one_message(name, tmp_path):
    build = DTYPE_TAKERS[name]
    if build is None and name.endswith("load_sharded"):  # from a sharded checkpoint folder
        torch_impl.checkpoint.save_sharded(torch_impl.TransformerEncoder(SMALL), tmp_path)

        def build(d):
            return jax_impl.checkpoint.load_sharded(tmp_path, dtype=d)

    elif build is None:  # load: from a checkpoint file
        path = tmp_path / "m.safetensors"
        torch_impl.save(torch_impl.TransformerEncoder(SMALL), path)

        def build(d):
            return jax_impl.load(path, dtype=d)

    with jax.enable_x64(False), pytest.raises(ValueError, match=re.escape(X64_MESSAGE)):
        build(jnp.float64)
    with jax.enable_x64(False):
        build(jnp.float32)  # float32 stays accepted


def test_with_x64_multi_head_attention_is_float64_and_matches_torch():
    """The filed case, the right way round: under x64 the JAX attention holds and returns
    float64, within float64's row of the torch twin on the same weights."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 5, 8))
    t_mha = torch_impl.MultiHeadAttention(8, 2, dtype=torch.float64)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        j_mha = jax_impl.MultiHeadAttention(8, 2, dtype=jnp.float64, rngs=_rngs())
        for name in ("q", "k", "v", "out"):
            lt, lj = getattr(t_mha, name), getattr(j_mha, name)
            lj.kernel[...] = jnp.asarray(lt.weight.detach().numpy().T)
            lj.bias[...] = jnp.asarray(lt.bias.detach().numpy())
        out_j = j_mha(jnp.asarray(x))
        assert out_j.dtype == jnp.float64
        out_j = np.asarray(out_j)
    with torch.no_grad():
        out_t = t_mha(torch.as_tensor(x)).numpy()
    assert_close(out_j, out_t, tolerance("float64", "cpu"), "float64 attention, jax vs torch")


# ---------------------------------------------------------------------------------------------
# Weights: finite by default; saving onto a directory


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_importing_non_finite_weights_is_refused_naming_the_tensor(fw, bad, tmp_path):
    weights = random_weights(SMALL, seed=10)
    weights["layers.0.ffn.in.weight"][3, 1] = bad
    impl = torch_impl if fw == "torch" else jax_impl
    message = "tensor 'layers.0.ffn.in.weight' holds 1 non-finite value (NaN or Inf)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        impl.from_weights(weights, SMALL)
    model = impl.from_weights(random_weights(SMALL, seed=10), SMALL)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        impl.import_weights(model, weights)
    path = tmp_path / "bad.safetensors"
    from shared import weights as v1

    v1.save_file(path, weights, SMALL)  # saving a diverged model stays possible
    with pytest.raises(CheckpointError, match=re.escape(message)):
        impl.load(path)
    # the explicit opt-out imports it as it is
    loaded = impl.from_weights(weights, SMALL, allow_nonfinite=True)
    got = impl.export_weights(loaded)["layers.0.ffn.in.weight"][3, 1]
    assert got == bad or (np.isnan(bad) and np.isnan(got))
    assert impl.load(path, allow_nonfinite=True) is not None


@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_saving_onto_a_directory_is_a_named_error_and_leaves_nothing(fw, tmp_path):
    impl = torch_impl if fw == "torch" else jax_impl
    model = impl.from_weights(random_weights(SMALL), SMALL)
    target = tmp_path / "checkpoints"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(
        OutputPathError, match=re.escape(f"cannot write {target}: it is a directory")
    ):
        impl.save(model, target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "keep.txt"]


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_both_frameworks_take_dtype_names_and_hold_the_same_weights(name):
    """``dtype="bfloat16"`` (a name) builds the same model in both frameworks: the parameters
    are in that dtype, and the exported weights are the same bfloat16 values."""
    weights = random_weights(SMALL)
    tm = torch_impl.from_weights(weights, SMALL, dtype=name)
    jm = jax_impl.from_weights(weights, SMALL, dtype=name)
    assert str(tm.embeddings.token.weight.dtype) == f"torch.{name}"
    assert str(jm.embeddings.token.embedding.dtype) == name
    exported_t, exported_j = torch_impl.export_weights(tm), jax_impl.export_weights(jm)
    for key in weights:
        np.testing.assert_array_equal(exported_t[key], exported_j[key])


@pytest.mark.parametrize("bad", ["nope", "int32"])
@pytest.mark.parametrize("fw", ["torch", "jax"])
def test_a_dtype_that_is_not_a_float_name_is_a_named_error(fw, bad):
    impl = torch_impl if fw == "torch" else jax_impl
    with pytest.raises(ValueError, match=re.escape(f"dtype={bad!r} must be a floating")):
        impl.from_weights(random_weights(SMALL), SMALL, dtype=bad)
