"""Hugging Face checkpoint folders <-> checkpoint format (weights + ``EncoderConfig``).

``load(folder)`` reads ``config.json`` + ``model.safetensors`` (or a sharded
``model.safetensors.index.json`` and the files it names) of BERT, RoBERTa, XLM-RoBERTa,
DistilBERT, ELECTRA (the discriminator body), GPT-2, ViT, ModernBERT (and mmBERT), NomicBERT,
EuroBERT, GTE, Llama and Qwen3; ``save(weights, cfg, folder)`` writes
a folder that ``transformers.AutoModel.from_pretrained`` loads. One module per family
(``bert.py`` ...) says everything that differs; this module is the machinery they share.

A task model (``BertForSequenceClassification``, ``GPT2LMHeadModel`` ...) keeps its body under
a prefix (``bert.``, ``transformer.``): the body is read and every other tensor is skipped and
listed. Without the prefix, only the family's known extras are skipped (buffers, a pooler);
any other unknown tensor is an error, so nothing is dropped silently.

Command line: ``python -m shared.hf FOLDER OUT.safetensors`` (or ``twin-encoder convert``) writes
our checkpoint format.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import numpy as np

from shared import layouts
from shared import weights as v1
from shared.atomic import OutputPathError, check_output_path
from shared.cli import ArgumentParser, fail
from shared.config import EncoderConfig
from shared.hf import (
    bert,
    distilbert,
    electra,
    eurobert,
    gpt2,
    gte,
    llama,
    modernbert,
    nomic_bert,
    qwen3,
    roberta,
    vit,
)
from shared.hf.family import Family
from shared.hf.files import (
    open_safetensors,
    read_config_json,
    read_tensor,
    weights_file,
    write_folder,
)

__all__ = ["FAMILIES", "Family", "family_of", "load", "load_bert", "main", "read", "save"]

Weights = dict[str, np.ndarray]

FAMILIES: tuple[Family, ...] = (
    bert.FAMILY,
    roberta.FAMILY,
    distilbert.FAMILY,
    electra.FAMILY,
    gpt2.FAMILY,
    vit.FAMILY,
    modernbert.FAMILY,
    nomic_bert.FAMILY,
    eurobert.FAMILY,
    gte.FAMILY,
    llama.FAMILY,
    qwen3.FAMILY,
)

# model_type values that look close but compute something else: why each is refused.
NEAR_MISSES = {
    "deberta": "relative position scores (disentangled attention)",
    "deberta-v2": "relative position scores (disentangled attention)",
    "beit": "a relative position bias in every layer",
    "mpnet": "a relative position bias in every layer",
    "albert": "one layer's weights shared across the stack, factorised embeddings",
    "gpt_neo": "local attention in alternate layers",
    "gptj": "rotary position embeddings on part of each head, and parallel attention and MLP",
    "mistral": "a causal sliding window of sliding_window keys including the query itself",
    "qwen2": "biases on q, k and v but not on the output projection",
    "gemma": "RMSNorm scaled by (1 + weight) and embeddings scaled by sqrt(hidden_size)",
    "gemma2": "logit soft-capping and norms after each sub-layer as well as before",
    "jina_bert": "ALiBi attention biases instead of positions",
}


def _supported() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_of(model_type: object) -> Family:
    """The family that reads ``model_type``, or a ValueError naming the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    why = NEAR_MISSES.get(model_type) if isinstance(model_type, str) else None
    raise ValueError(
        f"model_type is {model_type!r}; supported: {_supported()}"
        + (f" ({model_type} uses {why}, which this encoder does not compute)" if why else "")
    )


def load(folder: str | os.PathLike) -> tuple[Weights, EncoderConfig]:
    """Read a Hugging Face folder (``config.json`` + ``model.safetensors``, or the sharded
    ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors``) of any family.

    Returns:
        ``(weights, config)``: format arrays (float32, or float64 if stored so) and the
        matching :class:`EncoderConfig`, ready for ``torch_impl.from_weights`` or
        ``jax_impl.from_weights``.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: with the reason: no ``config.json``; no ``model.safetensors`` nor
            index (only pickle-based weights); an index naming a file that is not there,
            or a tensor its file lacks; a ``model_type`` or a feature this encoder lacks;
            a missing, unexpected, mis-shaped or non-float tensor.
    """
    weights, cfg, _, _ = read(folder)
    return weights, cfg


def load_bert(folder: str | os.PathLike) -> tuple[Weights, EncoderConfig]:
    """:func:`load`, for a BERT folder only (``model_type`` "bert")."""
    weights, cfg, _, _ = read(folder, model_types=bert.FAMILY.model_types)
    return weights, cfg


def read(
    folder: str | os.PathLike, *, model_types: tuple[str, ...] | None = None
) -> tuple[Weights, EncoderConfig, Family, list[str]]:
    """:func:`load`, plus the family and the names of the tensors it skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    config_path = folder / "config.json"
    raw = read_config_json(folder)
    model_type = raw.get("model_type")
    if model_types is not None and model_type not in model_types:
        only = ", ".join(repr(t) for t in model_types)
        raise ValueError(f"{config_path}: model_type is {model_type!r}; only {only} is read here")
    try:
        family = family_of(model_type)
        cfg = family.config(raw)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    path = weights_file(folder)
    with open_safetensors(path) as fh:
        names = list(fh.keys())
        arrays, skipped = _body(fh, names, family, cfg, path)
    weights = layouts.from_outside(family.table(cfg), arrays)
    try:
        v1.validate(weights, cfg)
    except v1.CheckpointError as e:
        raise ValueError(f"{path}: the tensors disagree with config.json: {e}") from None
    return weights, cfg, family, skipped


def _body(fh, names: list[str], family: Family, cfg: EncoderConfig, path: Path):
    """``({HF name without prefix: array}, [skipped names])``: the encoder's tensors."""
    prefix = family.prefix if any(n.startswith(family.prefix) for n in names) else ""
    rows = family.table(cfg)
    wanted = {prefix + hf for hf, _, _ in rows}
    skipped = [n for n in names if n not in wanted and _skipped(n, prefix, family)]
    unknown = sorted(set(names) - wanted - set(skipped))
    if unknown:
        raise ValueError(
            f"{path}: tensor {unknown[0]!r} is not part of a {family.name} encoder with "
            f"{cfg.n_layers} layers nor a known extra {family.skipped}"
            + (f"; and {len(unknown) - 1} more" if len(unknown) > 1 else "")
        )
    try:
        layouts.check_names(
            [prefix + hf for hf, _, _ in rows],
            names,
            detail=lambda _: f", which a {family.name} with {cfg.n_layers} layers needs",
            unexpected_ok=True,
        )
    except layouts.CheckpointError as e:
        raise ValueError(f"{path}: {e}") from None
    arrays = {hf: read_tensor(fh, prefix + hf, path) for hf, _, _ in rows}
    return arrays, skipped


def _skipped(name: str, prefix: str, family: Family) -> bool:
    """Outside the body's prefix (a task head), or one of the family's known extras."""
    if prefix and not name.startswith(prefix):
        return True
    inner = name.removeprefix(prefix)
    return any(fnmatch.fnmatchcase(inner, pattern) for pattern in family.skipped)


def save(
    weights: Weights,
    cfg: EncoderConfig,
    folder: str | os.PathLike,
    *,
    model_type: str | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers.AutoModel`` loads.

    ``max_shard_size`` (bytes, or a string such as ``"5GB"``) writes the sharded layout
    instead, as ``save_pretrained`` does: files ``model-0000k-of-0000n.safetensors`` of
    whole tensors, at most that size each, and ``model.safetensors.index.json``, written
    last (``shared.hf.files.write_folder``).

    ``model_type`` picks the family; by default it follows from the config (``image_size``:
    ViT; RoPE: Qwen3 with ``qk_norm``, ModernBERT without ``first_attn_norm``, Llama or
    EuroBERT with RMSNorm (causal or not), GTE or NomicBERT post-norm (attention biases or
    not); ``causal``: GPT-2, ``position_pad_id``: RoBERTa, ``embed_dim``: ELECTRA, no token
    types: DistilBERT, else BERT). Raises ValueError naming the field when the family cannot
    express ``cfg``, and when ``folder`` holds a sharded checkpoint (``shared.sharded``).
    """
    from shared import sharded

    if sharded.is_sharded(folder):
        raise ValueError(
            f"{folder} holds a sharded checkpoint of this project; a Hugging Face folder there "
            "would replace its index: save into another folder"
        )
    picked = None
    if model_type is None:
        model_type, picked = _model_type_for(cfg)
    family = family_of(model_type)
    v1.validate(weights, cfg)
    try:
        exported = family.export_config(cfg)
    except ValueError as error:
        if picked is None:
            raise
        raise ValueError(
            f"no Hugging Face family takes this config as it is: the nearest, {family.name} "
            f"(picked by {picked}), says: {error}; change that field, or pass model_type="
        ) from None
    config = {"model_type": model_type, "architectures": [family.architecture], **exported}
    tensors = layouts.to_outside(family.table(cfg), weights)
    folder = Path(folder)
    write_folder(folder, config, tensors, max_shard_size=max_shard_size)
    return folder


def _model_type_for(cfg: EncoderConfig) -> tuple[str, str]:
    """The family a config most resembles, and the fields that picked it."""
    if cfg.image_size:
        return "vit", "image_size > 0"
    if cfg.positional == "rope":
        if cfg.qk_norm:
            return "qwen3", "RoPE with qk_norm"
        if not cfg.first_attn_norm:
            return "modernbert", "RoPE without first_attn_norm"
        if cfg.norm == "rms_norm":
            return (
                ("llama", "RoPE, RMSNorm, causal")
                if cfg.causal
                else ("eurobert", "RoPE, RMSNorm, not causal")
            )
        return (
            ("gte", "RoPE, attention biases")
            if cfg.attention_bias
            else ("nomic_bert", "RoPE, no attention biases")
        )
    if cfg.causal:
        return "gpt2", "causal"
    if cfg.position_pad_id is not None:
        return "roberta", "position_pad_id set"
    if cfg.embed_dim:
        return "electra", "embed_dim set"
    if cfg.type_vocab_size == 0:
        return "distilbert", "type_vocab_size=0"
    return "bert", "the default"


def _count(n: int) -> str:
    """``109.5M``, ``30.2K``, ``812``: three significant figures or so."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def main(argv: list[str] | None = None, *, prog: str = "python -m shared.hf") -> int:
    """``python -m shared.hf FOLDER OUT.safetensors``: convert, and print a one-line summary.

    Exit status 0 when written; 1 when the folder's content is refused (an unsupported
    family, a pickle-only or corrupt checkpoint); 2 for a usage error (a folder that does
    not exist, an output path that cannot be written). Errors are one line, never a
    traceback, and nothing is written before the arguments are checked.
    """
    parser = ArgumentParser(
        prog=prog,
        description="Convert a Hugging Face folder (config.json + model.safetensors) of "
        f"{', '.join(f.name for f in FAMILIES)} to a checkpoint that torch_impl.load and "
        "jax_impl.load read.",
        epilog="Exit status: 0 written; 1 the folder's checkpoint is refused (the error says "
        "why); 2 usage error.",
    )
    parser.add_argument("folder", type=Path, help="the Hugging Face model folder")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        what = "is not a folder" if args.folder.exists() else "does not exist"
        return fail(f"{args.folder} {what}; expected a Hugging Face model folder")
    try:
        check_output_path(args.out)
    except OutputPathError as e:
        return fail(str(e))
    try:
        weights, cfg, family, skipped = read(args.folder)
    except (ValueError, OSError) as e:
        return fail(str(e), status=1)
    try:
        v1.save_file(args.out, weights, cfg)
    except (ValueError, OSError) as e:
        return fail(str(e), status=1)
    n_params = sum(a.size for a in weights.values())
    print(
        f"wrote {args.out}: {family.name}, {cfg.n_layers} layer{'' if cfg.n_layers == 1 else 's'}, "
        f"d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
        f"{_count(n_params)} parameters in {len(weights)} tensors; "
        f"skipped {len(skipped)}: {', '.join(skipped) if skipped else 'none'}"
    )
    return 0
