"""The design's example, end to end: the same weights give the same numbers in both frameworks."""

import numpy as np
from flax import nnx

import jax_impl
import torch_impl
from shared import EncoderConfig
from shared.tolerances import assert_close, tolerance


def test_design_example_runs_and_agrees(tmp_path):
    cfg = EncoderConfig(
        vocab_size=1000,
        d_model=64,
        n_heads=4,
        d_ff=256,
        n_layers=2,
        max_len=128,
        dropout=0.0,
        activation="gelu",
        norm_first=False,
        layer_norm_eps=1e-5,
        positional="sinusoidal",
    )
    tm = torch_impl.TransformerEncoder(cfg).eval()
    jm = jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(0))
    jm.eval()
    jax_impl.import_weights(jm, torch_impl.export_weights(tm))
    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, cfg.vocab_size, (2, 10))
    mask = np.ones((2, 10), dtype=bool)
    mask[1, 6:] = False
    h_t, attn_t = tm(input_ids, attention_mask=mask, return_attention=True)
    h_j, attn_j = jm(input_ids, attention_mask=mask, return_attention=True)
    assert h_t.shape == (2, 10, 64)
    assert len(attn_t) == 2 and attn_t[0].shape == (2, 4, 10, 10)
    tol = tolerance("float32", "cpu")
    assert_close(np.asarray(h_j), h_t.detach().numpy(), tol, "hidden states")
    for i, (a_j, a_t) in enumerate(zip(attn_j, attn_t, strict=True)):
        assert_close(np.asarray(a_j), a_t.detach().numpy(), tol, f"attention of layer {i}")

    path = tmp_path / "model.safetensors"
    torch_impl.save(tm, path)
    jm2 = jax_impl.load(path)
    assert_close(
        np.asarray(jm2(input_ids, attention_mask=mask)), h_t.detach().numpy(), tol, "loaded"
    )


def test_exported_weights_are_copies_not_views_of_the_live_parameters():
    import torch

    cfg = EncoderConfig(dropout=0.0)
    tm = torch_impl.TransformerEncoder(cfg)
    jm = jax_impl.TransformerEncoder(cfg, rngs=nnx.Rngs(0))
    for export, bump in (
        (torch_impl.export_weights, lambda: tm.encoder.layers[0].norm1.weight.add_(1.0)),
        (
            jax_impl.export_weights,
            lambda: setattr(
                jm.encoder.layers[0].norm1,
                "scale",
                nnx.Param(jm.encoder.layers[0].norm1.scale[...] + 1),
            ),
        ),
    ):
        model = tm if export is torch_impl.export_weights else jm
        exported = export(model)
        before = exported["layers.0.norm1.weight"].copy()
        with torch.no_grad():
            bump()
        np.testing.assert_array_equal(exported["layers.0.norm1.weight"], before)
