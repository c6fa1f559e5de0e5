"""Hugging Face families into both frameworks and back out: BERT, RoBERTa, XLM-RoBERTa,
DistilBERT, ELECTRA and GPT-2, each a tiny random model that transformers builds offline
from a config (eager attention), perturbed so that every norm and bias counts, saved with
``save_pretrained`` (task models, so the body's prefix and the skipped heads are exercised).

For each: last hidden state, every layer's hidden states and attention weights of both
frameworks (math and fused) against transformers at real positions, with padding of
different lengths; then ``shared.hf.save`` and ``transformers.AutoModel`` give the same
outputs again. The loader's and the exporter's refusals are at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parity_tests.helpers import build_pair, run_jax, run_torch, to_numpy
from shared import EncoderConfig, hf
from shared.tolerances import assert_close, tolerance

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

B, T = 3, 10
LENGTHS = (10, 7, 4)  # real tokens per row: padding of different lengths
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40)

# family -> (config, task model class saved, body attribute, left-pad the last row)
FAMILIES = {
    "bert": (
        lambda: transformers.BertConfig(
            vocab_size=60, type_vocab_size=2, hidden_act="relu", **SMALL
        ),
        "BertForSequenceClassification",
    ),
    "roberta": (
        lambda: transformers.RobertaConfig(
            vocab_size=60,
            max_position_embeddings=T + 2,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
            **SMALL,
        ),
        "RobertaForMaskedLM",
    ),
    "xlm-roberta": (
        lambda: transformers.XLMRobertaConfig(
            vocab_size=60,
            max_position_embeddings=T + 2,
            type_vocab_size=1,
            pad_token_id=1,
            hidden_act="gelu_new",
            **SMALL,
        ),
        "XLMRobertaModel",
    ),
    "distilbert": (
        lambda: transformers.DistilBertConfig(
            vocab_size=60, dim=32, n_layers=2, n_heads=4, hidden_dim=40, max_position_embeddings=16
        ),
        "DistilBertForSequenceClassification",
    ),
    "electra": (
        lambda: transformers.ElectraConfig(vocab_size=60, embedding_size=16, **SMALL),
        "ElectraForPreTraining",
    ),
    "vit": (
        lambda: transformers.ViTConfig(
            image_size=12, patch_size=4, num_channels=3, hidden_act="gelu", **SMALL
        ),
        "ViTForImageClassification",
    ),
    "gpt2": (
        lambda: transformers.GPT2Config(
            vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_inner=40, n_positions=16
        ),
        "GPT2LMHeadModel",
    ),
}


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Default initialisation sets norms to (1, 0) and biases to 0: make every tensor count."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, folder, body)``: the task model saved, and its body (transformers' reference)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    return name, folder, _save_family(name, folder)


def _save_family(name: str, folder: Path) -> torch.nn.Module:
    """Build the family's tiny task model, perturb it, save it; returns its body."""
    make_config, task = FAMILIES[name]
    config = make_config()
    config._attn_implementation = "eager"
    model = getattr(transformers, task)(config).eval()
    _perturb(model, seed=len(name))
    model.save_pretrained(folder)
    return model.base_model


def _inputs(cfg: EncoderConfig, name: str):
    """Ids (pads carry the pad id, as tokenizers write them), mask and token types; for a
    ViT, random pixels (B, C, H, W) and an all-real mask (for indexing)."""
    rng = np.random.default_rng(11)
    if cfg.image_size:
        shape = (B, cfg.num_channels, cfg.image_size, cfg.image_size)
        return rng.standard_normal(shape).astype(np.float32), np.ones((B, cfg.max_len)), None
    pad = cfg.position_pad_id or 0
    ids = rng.integers(pad + 1, cfg.vocab_size, (B, T))
    mask = (np.arange(T)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    if name in ("roberta", "xlm-roberta"):  # left padding too: positions count from the pads
        mask[-1] = mask[-1][::-1]
    ids = np.where(mask == 1, ids, pad)
    types = rng.integers(0, cfg.type_vocab_size, (B, T)) if cfg.type_vocab_size > 1 else None
    return ids, mask, types


def _reference(body, ids, mask, types) -> dict:
    if ids.dtype.kind == "f":  # a ViT's pixels
        kwargs = {"pixel_values": torch.from_numpy(ids)}
    else:
        kwargs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        kwargs["token_type_ids"] = torch.from_numpy(types)
    with torch.no_grad():
        out = body(
            output_attentions=True,
            output_hidden_states=True,
            **kwargs,
        )
    return {
        "h": out.last_hidden_state.numpy(),
        "hidden": [h.numpy() for h in out.hidden_states],
        "attn": [a.numpy() for a in out.attentions],
    }


def _compare(ours: dict, want: dict, mask: np.ndarray, what: str, final_norm: bool) -> None:
    """``final_norm``: transformers' last hidden state is after the final norm (GPT-2)."""
    real = mask.astype(bool)
    tol = tolerance("float32")
    assert_close(ours["h"][real], want["h"][real], tol, f"{what} last hidden state")
    n = len(want["hidden"]) - 1 if final_norm else len(want["hidden"])
    assert len(ours["hidden"]) == len(want["hidden"])
    for i in range(n):
        assert_close(ours["hidden"][i][real], want["hidden"][i][real], tol, f"{what} hidden {i}")
    assert len(ours["attn"]) == len(want["attn"])
    for i, (a, b) in enumerate(zip(ours["attn"], want["attn"], strict=True)):
        a, b = np.swapaxes(a, 1, 2), np.swapaxes(b, 1, 2)  # (B, T, H, S): index real queries
        assert_close(a[real], b[real], tol, f"{what} attention {i}")


def _ours(model, run, ids, mask, types) -> dict:
    wanted = {"return_attention": True, "return_hidden_states": True}
    if ids.dtype.kind == "f":  # a ViT's pixels
        h, attn, hidden = run(model, None, pixel_values=ids, **wanted)
    else:
        h, attn, hidden = run(model, ids, mask, types, **wanted)
    return {
        "h": to_numpy(h),
        "hidden": [to_numpy(x) for x in hidden],
        "attn": [to_numpy(a) for a in attn],
    }


@pytest.mark.parametrize("backend", ["math", "fused"])
def test_both_frameworks_match_transformers(family, backend):
    name, folder, body = family
    weights, cfg = hf.load(folder)
    ids, mask, types = _inputs(cfg, name)
    want = _reference(body, ids, mask, types)
    tm, jm = build_pair(cfg, weights, backend=backend)
    for framework, model, run in (("torch", tm, run_torch), ("jax", jm, run_jax)):
        ours = _ours(model, run, ids, mask, types)
        _compare(ours, want, mask, f"{name} {framework} {backend}", name == "gpt2")


def test_save_gives_a_folder_that_automodel_loads_and_runs_the_same(family, tmp_path):
    name, folder, body = family
    weights, cfg = hf.load(folder)
    hf.save(
        weights,
        cfg,
        tmp_path,
        model_type=json.loads((folder / "config.json").read_text())["model_type"],
    )
    model, info = transformers.AutoModel.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    # the pooler (BertModel, RobertaModel) is a head on top, which this encoder does not hold
    assert all(k.startswith("pooler.") for k in info["missing_keys"]), info
    assert not info["unexpected_keys"], info
    ids, mask, types = _inputs(cfg, name)
    want = _reference(body, ids, mask, types)
    back = _reference(model.eval(), ids, mask, types)
    # same weights; GPT-2's gelu_new comes back as gelu_pytorch_tanh (what we compute),
    # which differs by rounding only (README, "Hugging Face families")
    tol = tolerance("float32")
    assert_close(back["h"], want["h"], tol, f"{name} through AutoModel")
    for i, (a, b) in enumerate(zip(back["attn"], want["attn"], strict=True)):
        assert_close(a, b, tol, f"{name} attention {i} through AutoModel")
    weights2, cfg2 = hf.load(tmp_path)
    assert cfg2 == cfg
    for k in weights:
        np.testing.assert_array_equal(weights2[k], weights[k], err_msg=k)


def test_task_model_lists_the_heads_it_skipped(family):
    name, folder, _ = family
    _, _, fam, skipped = hf.read(folder)
    heads = {
        "bert": "classifier.weight",
        "roberta": "lm_head.dense.weight",
        "distilbert": "pre_classifier.weight",
        "vit": "classifier.weight",
        "electra": "discriminator_predictions.dense.weight",
    }
    if name in heads:
        assert heads[name] in skipped, skipped
    assert all(not s.startswith(fam.prefix) or "pooler" in s for s in skipped), skipped


# --- refusals: each a ValueError naming what was expected and what was got -----------------


def _config_only(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 60,
    "n_embd": 32,
    "n_head": 4,
    "n_layer": 2,
    "n_positions": 8,
}


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"model_type": "mistral"},
            r"model_type is 'mistral'; supported: \[.*'gpt2'.*'modernbert'.*causal sliding window",
        ),
        ({"model_type": "deberta-v2"}, r"'deberta-v2'.*relative position scores"),
        ({"model_type": "beit"}, r"'beit'.*relative position bias"),
        ({"model_type": "mpnet"}, r"'mpnet'.*relative position bias"),
        ({"model_type": "t5"}, r"model_type is 't5'; supported: \['bert', 'distilbert'"),
        (
            GPT2 | {"scale_attn_by_inverse_layer_idx": True},
            r"scale_attn_by_inverse_layer_idx is True; only False",
        ),
        (GPT2 | {"reorder_and_upcast_attn": True}, r"reorder_and_upcast_attn is True; only False"),
        (
            GPT2 | {"activation_function": "quick_gelu"},
            r"activation_function is 'quick_gelu'; supported: \[",
        ),
        ({"model_type": "distilbert", "dim": 32}, r"missing field\(s\) \['vocab_size'"),
    ],
    ids=[
        "mistral",
        "deberta",
        "beit",
        "mpnet",
        "t5",
        "gpt2_layer_idx",
        "gpt2_upcast",
        "quick_gelu",
        "missing",
    ],
)
def test_config_this_encoder_cannot_compute_is_refused_saying_why(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        hf.load(_config_only(tmp_path, config))


def test_only_pickle_weights_or_a_broken_index_are_refused_without_reading(tmp_path):
    folder = _config_only(tmp_path / "bin", GPT2)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"no model\.safetensors, only \['pytorch_model\.bin'\]"):
        hf.load(folder)
    folder = _config_only(tmp_path / "sharded", GPT2)
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"sharded checkpoint's index must be .* 'weight_map'"):
        hf.load(folder)


def _weights(cfg: EncoderConfig):
    from shared import reference

    return reference.init_weights(cfg)


@pytest.mark.parametrize(
    "model_type, fields, message",
    [
        (
            "bert",
            dict(norm_first=True),
            "BERT cannot express norm_first=True: a BERT config needs norm_first=False",
        ),
        ("bert", dict(type_vocab_size=0), "BERT cannot express type_vocab_size=0"),
        ("gpt2", dict(positional="learned"), "GPT-2 cannot express causal=False"),
        ("roberta", dict(), "RoBERTa cannot express position_pad_id=None"),
        ("distilbert", dict(layer_norm_eps=1e-5), "DistilBERT cannot express layer_norm_eps=1e-05"),
        (
            "distilbert",
            dict(activation="gelu_tanh"),
            "DistilBERT cannot express activation='gelu_tanh'",
        ),
        ("electra", dict(causal=True), "ELECTRA cannot express causal=True"),
        ("vit", dict(), "ViT cannot express image_size=0"),
    ],
)
def test_export_refuses_a_config_the_family_cannot_express(tmp_path, model_type, fields, message):
    base = dict(vocab_size=30, d_model=16, n_heads=2, d_ff=24, n_layers=1, positional="learned")
    base |= dict(embed_norm=True, type_vocab_size=0 if model_type == "distilbert" else 2)
    base |= dict(layer_norm_eps=1e-12 if model_type == "distilbert" else 1e-5)
    cfg = EncoderConfig(**(base | fields))
    with pytest.raises(ValueError, match=message):
        hf.save(_weights(cfg), cfg, tmp_path, model_type=model_type)
    assert not (tmp_path / "model.safetensors").exists()


def test_export_of_a_config_no_family_takes_names_the_pick_and_the_way_out(tmp_path):
    """The project's default sinusoidal encoder has no Hugging Face family: the error says
    which family was nearest, why it was picked, and what it refused."""
    cfg = EncoderConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=24, n_layers=1)
    message = (
        r"no Hugging Face family takes this config as it is: the nearest, DistilBERT \(picked "
        r"by type_vocab_size=0\), says: DistilBERT cannot express positional='sinusoidal'.*pass model_type="
    )
    with pytest.raises(ValueError, match=message):
        hf.save(_weights(cfg), cfg, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_load_bert_refuses_other_families(tmp_path):
    with pytest.raises(ValueError, match=r"model_type is 'gpt2'; only 'bert' is read here"):
        hf.load_bert(_config_only(tmp_path, GPT2))


# --- the study tools take any family -------------------------------------------------------


@pytest.mark.parametrize("name", ["roberta", "vit"])
def test_examples_take_an_hf_folder(name, tmp_path, capsys):
    from examples import attention_maps, divergence_report

    folder = tmp_path / name
    _save_family(name, folder)
    out = tmp_path / "out"
    argv = ["--hf", str(folder), "--out", str(out), "--layer", "1"]
    maps = attention_maps.run(attention_maps.parse_args(argv))
    assert maps.torch.shape[0] == 4  # heads
    assert_close(maps.jax, maps.torch, tolerance("float32"), "attention maps")
    if name == "vit":  # (12 / 4)^2 = 9 patches after the class token, on a 3 x 3 grid
        assert len(maps.tokens) == 10
        assert (out / "layer1_class_to_patches.png").is_file()
    argv = ["--hf", str(folder), "--out", str(out), "--modes", "float32-highest"]
    argv += ["--batch", "2", "--seq-len", "8"]
    report = divergence_report.run(divergence_report.parse_args(argv))
    assert report["float32-highest"]["first_out_of_tolerance"] is None
    assert len(report["float32-highest"]["hidden_states"]) == 3  # embeddings + 2 layers


def test_gelu_new_is_gelu_tanh_within_rounding():
    """Why ``gelu_new`` needs no name of its own: transformers' written-out tanh formula and
    ``F.gelu(approximate="tanh")`` (our gelu_tanh) differ in the last bits of a few values."""
    from transformers.activations import NewGELUActivation

    x = torch.linspace(-10, 10, 2_000_001, dtype=torch.float32)
    ours = torch.nn.functional.gelu(x, approximate="tanh")
    diff = (NewGELUActivation()(x) - ours).abs()
    assert 0 < diff.max().item() <= 4.8e-7  # not bit-identical, but rounding
    assert (diff > 0).float().mean().item() < 0.01  # in under 1% of the values
    assert diff.max().item() < tolerance("float32").atol / 10
