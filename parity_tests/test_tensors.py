"""The one tensor table (shared/tensors.py), what follows from it, and the adapters that
both implementations export under the same names (shared/frameworks.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from parity_tests.helpers import build_pair, random_weights, tiny_config, to_numpy
from shared import weights as v1
from shared.frameworks import IMPLS
from shared.tensors import axes_of, tensors
from shared.tolerances import assert_close, tolerance


def test_table_gives_the_documented_format_v1_shapes_for_a_bert_like_config():
    """Shapes by hand from the format's documentation (shared/weights.py's docstring)."""
    cfg = tiny_config(
        vocab_size=30, d_model=8, n_heads=2, d_ff=12, n_layers=1, max_len=10,
        positional="learned", type_vocab_size=2, embed_norm=True, final_norm=True,
    )  # fmt: skip
    d, f = 8, 12
    want = {
        "embeddings.token.weight": (30, d),
        "embeddings.position.weight": (10, d),
        "embeddings.token_type.weight": (2, d),
        "embeddings.norm.weight": (d,),
        "embeddings.norm.bias": (d,),
        **{f"layers.0.attention.{n}.weight": (d, d) for n in ("q", "k", "v", "out")},
        **{f"layers.0.attention.{n}.bias": (d,) for n in ("q", "k", "v", "out")},
        "layers.0.norm1.weight": (d,),
        "layers.0.norm1.bias": (d,),
        "layers.0.ffn.in.weight": (d, f),
        "layers.0.ffn.in.bias": (f,),
        "layers.0.ffn.out.weight": (f, d),
        "layers.0.ffn.out.bias": (d,),
        "layers.0.norm2.weight": (d,),
        "layers.0.norm2.bias": (d,),
        "final_norm.weight": (d,),
        "final_norm.bias": (d,),
    }
    assert v1.expected_shapes(cfg) == want
    for t in tensors(cfg):
        assert len(t.axes) == len(t.shape) and axes_of(t.name) == t.axes


def test_logical_axes_name_what_each_axis_is():
    assert axes_of("layers.11.attention.q.weight") == ("embed", "heads")
    assert axes_of("layers.0.attention.out.weight") == ("heads", "embed")
    assert axes_of("layers.2.ffn.in.bias") == ("mlp",)
    assert axes_of("embeddings.patch.weight") == ("channels", "patch", "patch", "embed")
    assert axes_of("layers.0.attention.k.weight") == ("embed", "kv_heads")  # G K/V heads
    assert axes_of("layers.1.attention.q_norm.weight") == ("head_dim",)
    assert axes_of("layers.3.ffn.gate.weight") == ("embed", "mlp")
    with pytest.raises(ValueError, match=r"'layers\.0\.ffn\.up\.weight' is not a tensor"):
        axes_of("layers.0.ffn.up.weight")


def test_format_2_fields_are_the_config_fields_added_with_format_2():
    """The six fields (and their "not used" values) of the format-2 families: GPT-2's causal,
    RoBERTa's position_pad_id, ELECTRA's embed_dim, ViT's image_size, patch_size and
    num_channels, read from the config's own field marks."""
    assert v1.FORMAT_2_FIELDS == {
        "causal": False,
        "position_pad_id": None,
        "embed_dim": 0,
        "image_size": 0,
        "patch_size": 16,
        "num_channels": 3,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"embed_dim": 8, "positional": "learned", "embed_norm": True, "type_vocab_size": 2},
        {"image_size": 8, "patch_size": 4, "max_len": 5, "positional": "learned"},
    ],
    ids=["plain", "electra", "vit"],
)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_framework_rows_cover_the_table_in_checkpoint_order(framework, fields):
    cfg = tiny_config(**fields)
    impl = IMPLS[framework]
    model = impl.from_weights(random_weights(cfg), cfg)
    names = [names[0] for _, names, _ in impl.rows(model)]
    assert names == [t.name for t in tensors(cfg)]
    exported = impl.export_weights(model)
    weights = random_weights(cfg)
    assert all(np.array_equal(exported[n], weights[n]) for n in names)


def test_impls_maps_both_names_and_shared_imports_no_framework():
    assert list(IMPLS) == ["torch", "jax"]
    for name, impl in IMPLS.items():
        for adapter in ("DTYPES", "to_numpy", "export_weights", "save", "from_weights", "load"):
            assert hasattr(impl, adapter), f"{name}_impl has no {adapter}"
    with pytest.raises(KeyError, match="unknown framework 'mxnet'"):
        IMPLS["mxnet"]
    code = (
        "import sys, shared, shared.frameworks, shared.parallel, shared.weights, shared.tensors; "
        "print(sorted(m for m in ('torch', 'jax', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_general_mask_argument_combines_with_padding_and_causality(framework):
    """mask= (B|1, H|1, T|1, T) through the public call: a lower-triangular mask is is_causal,
    and padding given as a (B, 1, 1, T) mask is attention_mask."""
    cfg = tiny_config()
    tm, jm = build_pair(cfg, random_weights(cfg, seed=3))
    model = tm if framework == "torch" else jm
    rng = np.random.default_rng(3)
    ids = rng.integers(0, cfg.vocab_size, (2, 6))
    padding = np.ones((2, 6), dtype=bool)
    padding[1, 4:] = False
    tril = np.tril(np.ones((1, 1, 6, 6), dtype=bool))
    tol = tolerance("float32")
    call = model(ids, padding, mask=tril)
    assert_close(to_numpy(call), to_numpy(model(ids, padding, is_causal=True)), tol, "tril")
    as_mask = model(ids, mask=padding[:, None, None, :])
    assert_close(to_numpy(as_mask), to_numpy(model(ids, padding)), tol, "padding")
