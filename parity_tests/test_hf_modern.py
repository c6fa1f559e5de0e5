"""The encoders of 2021 on, from Hugging Face folders into both frameworks and back out:
ModernBERT, NomicBERT, EuroBERT, GTE, Llama and Qwen3.

Each is a tiny random model that transformers builds offline from a config (eager
attention), every tensor perturbed so that each norm, bias and half of a packed matrix
counts, saved with ``save_pretrained`` as a task model (so the body's prefix and the
skipped heads are exercised). Inputs are ragged: right padding for the bidirectional
families, left padding with explicit ``position_ids`` for the causal ones, and T longer
than ModernBERT's window. Both frameworks on every backend give every layer's hidden
state, and on the math backend the attention weights, of transformers at real positions,
within the float32 row; then ``shared.hf.save`` -> ``transformers.AutoModel`` gives the
same outputs, and the exported arrays reload bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import jax_impl.flash
import torch_impl.flash
from parity_tests.helpers import build_pair, run_jax, run_torch, to_numpy
from shared import hf
from shared.tolerances import assert_close, tolerance

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

B, T = 3, 12
LENGTHS = (12, 9, 5)  # real tokens per row
SMALL = dict(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=40,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
)

# family -> (config, task model saved)
FAMILIES = {
    "modernbert": (
        lambda: transformers.ModernBertConfig(
            **SMALL, local_attention=4, cls_token_id=None, sep_token_id=None
        ),
        "ModernBertForMaskedLM",
    ),
    "nomic_bert": (lambda: transformers.NomicBertConfig(**SMALL), "NomicBertForMaskedLM"),
    "eurobert": (
        lambda: transformers.EuroBertConfig(**SMALL, num_key_value_heads=1, mask_token_id=3),
        "EuroBertForMaskedLM",
    ),
    "gte": (lambda: transformers.GteConfig(**SMALL, type_vocab_size=2), "GteForMaskedLM"),
    "llama": (
        lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2, rms_norm_eps=1e-5),
        "LlamaForCausalLM",
    ),
    "qwen3": (
        lambda: transformers.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16),
        "Qwen3ForCausalLM",
    ),
}
CAUSAL = ("llama", "qwen3")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, folder, body)``: the task model saved, and its body (the reference)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    make_config, task = FAMILIES[name]
    config = make_config()
    config._attn_implementation = "eager"
    model = getattr(transformers, task)(config).eval()
    torch.manual_seed(len(name))
    with torch.no_grad():
        for p in model.parameters():  # default init sets norms to 1, biases to 0
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return name, folder, model.base_model


@pytest.fixture
def small_blocks(monkeypatch):
    """Flash blocks of 4 queries and 3 keys: several blocks at T = 12, the last partial."""
    for module in (torch_impl.flash, jax_impl.flash):
        monkeypatch.setattr(module, "BLOCK_Q", 4)
        monkeypatch.setattr(module, "BLOCK_K", 3)


def _inputs(cfg, name: str):
    """Ids, mask, token types and positions: right padding, or left padding with
    explicit positions (0 at each row's first real token) for the causal families."""
    rng = np.random.default_rng(5)
    ids = rng.integers(1, cfg.vocab_size, (B, T))
    mask = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    positions = None
    if name in CAUSAL:
        mask = mask[:, ::-1].copy()  # left padding
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ids = np.where(mask == 1, ids, 0)
    types = rng.integers(0, cfg.type_vocab_size, (B, T)) if cfg.type_vocab_size > 1 else None
    return ids, mask, types, positions


def _reference(body, ids, mask, types, positions) -> dict:
    kwargs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        kwargs["token_type_ids"] = torch.from_numpy(types)
    if positions is not None:
        kwargs["position_ids"] = torch.from_numpy(positions)
    with torch.no_grad():
        out = body(output_attentions=True, output_hidden_states=True, **kwargs)
    return {
        "h": out.last_hidden_state.numpy(),
        "hidden": [h.numpy() for h in out.hidden_states],
        "attn": [a.numpy() for a in out.attentions],
    }


def _ours(model, run, ids, mask, types, positions, *, attention: bool) -> dict:
    out = run(
        model,
        ids,
        mask,
        types,
        position_ids=positions,
        return_attention=attention,
        return_hidden_states=True,
    )
    h, attn, hidden = out if attention else (out[0], None, out[1])
    return {
        "h": to_numpy(h),
        "hidden": [to_numpy(x) for x in hidden],
        "attn": None if attn is None else [to_numpy(a) for a in attn],
    }


def _compare(ours: dict, want: dict, mask, what: str, final_norm: bool) -> None:
    """transformers' last entry of hidden_states is after the final norm, where there is one."""
    real = mask.astype(bool)
    tol = tolerance("float32")
    assert_close(ours["h"][real], want["h"][real], tol, f"{what} last hidden state")
    assert len(ours["hidden"]) == len(want["hidden"])
    n = len(want["hidden"]) - 1 if final_norm else len(want["hidden"])
    for i in range(n):
        assert_close(ours["hidden"][i][real], want["hidden"][i][real], tol, f"{what} hidden {i}")
    if ours["attn"] is None:
        return
    assert len(ours["attn"]) == len(want["attn"])
    for i, (a, b) in enumerate(zip(ours["attn"], want["attn"], strict=True)):
        a, b = np.swapaxes(a, 1, 2), np.swapaxes(b, 1, 2)  # (B, T, H, S): index real queries
        assert_close(a[real], b[real], tol, f"{what} attention {i}")


@pytest.mark.parametrize("backend", ["math", "fused", "flash"])
def test_both_frameworks_match_transformers(family, backend, small_blocks):
    name, folder, body = family
    weights, cfg = hf.load(folder)
    ids, mask, types, positions = _inputs(cfg, name)
    if cfg.sliding_window is not None:
        assert T > 2 * cfg.sliding_window + 1  # the window masks something
    want = _reference(body, ids, mask, types, positions)
    tm, jm = build_pair(cfg, weights, backend=backend)
    for framework, model, run in (("torch", tm, run_torch), ("jax", jm, run_jax)):
        ours = _ours(model, run, ids, mask, types, positions, attention=backend == "math")
        _compare(ours, want, mask, f"{name} {framework} {backend}", cfg.final_norm)


def test_save_gives_a_folder_that_automodel_loads_and_runs_the_same(family, tmp_path):
    name, folder, body = family
    weights, cfg = hf.load(folder)
    hf.save(weights, cfg, tmp_path)  # the family follows from the config
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == name
    model, info = transformers.AutoModel.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types, positions = _inputs(cfg, name)
    want = _reference(body, ids, mask, types, positions)
    back = _reference(model.eval(), ids, mask, types, positions)
    tol = tolerance("float32")
    real = mask.astype(bool)
    assert_close(back["h"][real], want["h"][real], tol, f"{name} through AutoModel")
    for i, (a, b) in enumerate(zip(back["hidden"], want["hidden"], strict=True)):
        assert_close(a[real], b[real], tol, f"{name} hidden {i} through AutoModel")
    weights2, cfg2 = hf.load(tmp_path)
    assert cfg2 == cfg
    assert sorted(weights2) == sorted(weights)
    for k in weights:
        np.testing.assert_array_equal(weights2[k], weights[k], err_msg=k)


def test_task_model_skips_its_head_and_only_that(family):
    name, folder, _ = family
    _, _, fam, skipped = hf.read(folder)
    heads = {
        "modernbert": "head.dense.weight",
        "nomic_bert": "cls.predictions.transform.dense.weight",
        "gte": "lm_head.dense.weight",
        "llama": "lm_head.weight",
        "qwen3": "lm_head.weight",
        "eurobert": "lm_head.weight",
    }
    assert heads[name] in skipped, skipped
    assert all(not s.startswith(fam.prefix) for s in skipped), skipped


def _file(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize(
    ("name", "packed", "first", "second"),
    [
        ("modernbert", "model.layers.1.mlp.Wi.weight", "ffn.gate", "ffn.in"),
        ("gte", "gte.encoder.layer.1.mlp.up_gate_proj.weight", "ffn.in", "ffn.gate"),
    ],
)
def test_packed_glu_halves_land_where_the_table_says(name, packed, first, second, tmp_path):
    """ModernBERT's Wi holds the activated half first, GTE's up_gate_proj the linear half
    first: read straight from the file, each half is the (transposed) format tensor."""
    make_config, task = FAMILIES[name]
    config = make_config()
    model = getattr(transformers, task)(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path)
    weights, cfg = hf.load(tmp_path)
    a = _file(tmp_path)[packed]  # (2F, D)
    f = cfg.d_ff
    np.testing.assert_array_equal(weights[f"layers.1.{first}.weight"], a[:f].T)
    np.testing.assert_array_equal(weights[f"layers.1.{second}.weight"], a[f:].T)
    assert not np.allclose(a[:f], a[f:])


# --- refusals: each a ValueError naming what was expected and what was got -----------------


def _config_only(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


LLAMA = {
    "model_type": "llama",
    "vocab_size": 60,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            LLAMA | {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}},
            r"rope_type 'llama3'; only 'default' \(unscaled RoPE\)",
        ),
        (
            LLAMA | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_type 'yarn'; only 'default'",
        ),
        (  # transformers 5 reads rope_scaling into rope_parameters even beside them
            LLAMA
            | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
            | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"rope_scaling has rope_type 'llama3'",
        ),
        (LLAMA | {"num_key_value_heads": 3}, r"n_kv_heads=3 must divide n_heads=4"),
        (LLAMA | {"hidden_act": "gelu"}, r"hidden_act is 'gelu'; expected 'silu'"),
        (LLAMA | {"pretraining_tp": 2}, r"pretraining_tp is 2; only 1"),
        (
            LLAMA | {"model_type": "qwen3", "use_sliding_window": True},
            r"use_sliding_window is True.*only full attention",
        ),
        (
            {"model_type": "modernbert", **{k: LLAMA[k] for k in LLAMA if k != "model_type"}}
            | {"num_key_value_heads": None, "local_attention": 0},
            r"sliding_window=0 must be >= 1",
        ),
        ({"model_type": "mistral"}, r"'mistral'.*causal sliding window"),
        ({"model_type": "gemma"}, r"'gemma'.*\(1 \+ weight\)"),
    ],
    ids=[
        "llama3",
        "yarn",
        "scaling_beside_parameters",
        "kv_heads",
        "act",
        "tp",
        "qwen3_window",
        "window0",
        "mistral",
        "gemma",
    ],
)
def test_configs_this_encoder_cannot_compute_are_refused_saying_why(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        hf.load(_config_only(tmp_path, config))


def test_export_refuses_what_a_family_cannot_express(family, tmp_path):
    name, folder, _ = family
    weights, cfg = hf.load(folder)
    other = {"modernbert": "llama", "llama": "modernbert"}.get(name, "llama")
    with pytest.raises(ValueError, match=r"cannot express \w+=.*: a .* config needs"):
        hf.save(weights, cfg, tmp_path, model_type=other)
