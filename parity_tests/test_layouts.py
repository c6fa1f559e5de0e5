"""The one layout vocabulary (``shared/layouts.py``): every layout's two maps are inverses,
each matches the packing it names, and the shape check and name report say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from shared import layouts

D, H = 6, 3


def _qkv(rng: np.random.Generator, shape: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.standard_normal(shape) for _ in range(3)]


@pytest.mark.parametrize(
    "layout, count, shape",
    [
        ("copy", 1, (D, D)),
        ("transpose", 1, (D, 2 * D)),
        ("fused_columns", 3, (D, D)),
        ("fused_columns", 3, (D,)),
        ("fused_columns_transposed", 3, (D, D)),
        ("heads_out", 1, (D, D)),
        ("heads_out", 1, (D,)),
        ("heads_in", 1, (D, D)),
        ("leading_axis", 1, (1, D)),
        ("patches", 1, (3, 2, 2, D)),
    ],
)
def test_split_inverts_join(layout, count, shape):
    arrays = _qkv(np.random.default_rng(0), shape)[:count]
    lay = layouts.LAYOUTS[layout]
    back = lay.split(lay.join(arrays, H), count)
    assert len(back) == count
    for a, b in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_layouts_pack_as_named():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, (D, D))
    fused = layouts.LAYOUTS["fused_columns"].join([q, k, v], H)
    np.testing.assert_array_equal(fused[:, D : 2 * D], k)  # GPT-2's c_attn: k in the middle
    in_proj = layouts.LAYOUTS["fused_columns_transposed"].join([q, k, v], H)
    np.testing.assert_array_equal(in_proj[2 * D :], v.T)  # PyTorch's in_proj_weight rows
    heads = layouts.LAYOUTS["heads_out"].join([q], H)  # (D, H, hd)
    np.testing.assert_array_equal(heads[:, 1], q[:, 2:4])  # head 1 = columns hd..2hd
    heads_in = layouts.LAYOUTS["heads_in"].join([q], H)  # (H, hd, D)
    np.testing.assert_array_equal(heads_in[2], q[4:6])  # head 2 = rows 2hd..3hd


def test_tables_round_trip_and_report_missing_and_shape():
    rows = layouts.prefixed(
        [("c_attn.weight", ("q.weight", "k.weight", "v.weight"), "fused_columns")],
        "h.0.",
        "layers.0.attention.",
    )
    rng = np.random.default_rng(2)
    weights = dict(zip(rows[0][1], _qkv(rng, (D, D)), strict=True))
    outside = layouts.to_outside(rows, weights, shapes={"h.0.c_attn.weight": (D, 3 * D)})
    assert outside["h.0.c_attn.weight"].shape == (D, 3 * D)
    back = layouts.from_outside(rows, outside)
    assert back.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(back[name], weights[name])
    with pytest.raises(layouts.CheckpointError, match=r"expected shape \(6, 6\).*found \(6, 5\)"):
        layouts.to_outside(
            rows,
            weights | {"layers.0.attention.k.weight": np.zeros((D, 5))},
            shapes={"h.0.c_attn.weight": (D, 3 * D)},
        )
    del weights["layers.0.attention.v.weight"]
    with pytest.raises(
        layouts.CheckpointError, match=r"missing tensor 'layers\.0\.attention\.v\.weight'"
    ):
        layouts.to_outside(rows, weights)


def test_name_report_names_first_missing_then_unexpected():
    with pytest.raises(ValueError, match=r"missing tensor 'b'.*; and 1 more"):
        layouts.check_names(["a", "b", "c"], ["a"])
    with pytest.raises(ValueError, match=r"unexpected tensor 'x'"):
        layouts.check_names(["a"], ["a", "x"])
    layouts.check_names(["a"], ["a", "x"], unexpected_ok=True)
