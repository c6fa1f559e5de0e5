"""What a run measures: the variant registry, the suites, their expansion into cases (meshes
included), presets and config files. Needs neither torch nor JAX."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import suites, variants
from benchmarks.mesh import MeshSpec, parse_mesh
from benchmarks.suites import SUITES, Case, Selection, expand
from shared.backends import BACKENDS


def test_every_backend_is_a_variant_and_each_variant_names_its_implementation():
    assert variants.OURS_VARIANTS == tuple(f"ours-{b}" for b in BACKENDS)
    assert variants.PEER_VARIANTS == ("hf", "hf-eager", "keras")
    assert set(variants.VARIANTS) == {*variants.OURS_VARIANTS, "native", *variants.PEER_VARIANTS}
    assert suites.variant_parts("ours-flash") == ("ours", "flash")
    assert suites.variant_parts("native") == ("native", "native")
    assert suites.variant_parts("hf-eager") == ("hf", "eager")
    shardable = [n for n, v in variants.REGISTRY.items() if v.shardable]
    assert shardable == list(variants.OURS_VARIANTS)
    with pytest.raises(ValueError, match="variant='tf' must be one of ours-math"):
        variants.variant("tf")


def _cpu_selection(**kw) -> Selection:
    return Selection(frameworks=("torch", "jax"), device="cpu", **kw)


def test_every_pair_is_adjacent_torch_first_so_one_parity_check_serves_it():
    cases = expand(SUITES["quick"], _cpu_selection())
    keys = [c.pair_key for c in cases]
    for key in set(keys):
        first, last = keys.index(key), len(keys) - 1 - keys[::-1].index(key)
        group = cases[first : last + 1]
        assert all(c.pair_key == key for c in group)
        frameworks = [c.framework for c in group]
        assert frameworks == sorted(frameworks, key=["torch", "jax"].index)


def test_standard_suite_shrinks_the_batch_as_sequences_grow():
    cases = expand(SUITES["standard"], _cpu_selection())
    shapes = sorted({(c.seq_len, c.batch) for c in cases})
    assert shapes == [(128, 8), (256, 4), (512, 2), (1024, 1), (2048, 1)]
    eager_train = {c.seq_len for c in cases if c.phase == "train_step" and c.mode == "eager"}
    assert eager_train == {128, 256, 512}
    assert {c.variant for c in cases} == {"ours-math", "ours-fused", "ours-flash", "native"}


def test_command_line_choices_replace_the_suites_sweeps_by_their_cross_product():
    cases = expand(
        SUITES["standard"],
        _cpu_selection(phases=("forward_backward",), modes=("eager",), batch=3, seq_lens=(16,)),
    )
    assert {(c.phase, c.mode, c.batch, c.seq_len) for c in cases} == {
        ("forward_backward", "eager", 3, 16)
    }
    assert len(cases) == 2 * 4  # frameworks x variants (math, fused, flash, native)


def test_configs_come_from_presets_or_json_files(tmp_path):
    name, cfg = suites.load_config("bert-base")
    assert (name, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_layers) == (
        "bert-base",
        768,
        12,
        3072,
        6,
    )
    large = suites.PRESETS["bert-large"]
    assert (large.d_model, large.n_heads, large.d_ff, large.n_layers) == (1024, 16, 4096, 24)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"d_model": 32, "n_heads": 2, "d_ff": 64, "dropout": 0.0}))
    name, cfg = suites.load_config(str(path))
    assert (name, cfg.d_model) == ("mine", 32)
    with pytest.raises(ValueError, match="neither a preset"):
        suites.load_config("no-such-model")


def test_max_len_grows_to_the_longest_sequence():
    cfg = suites.PRESETS["bert-base"]
    case = Case("torch", "ours-fused", "eager", "forward", "cpu", "float32", 1, 2048)
    assert suites.max_len_for(cfg, [case]).max_len == 2048
    assert suites.max_len_for(cfg, []).max_len == cfg.max_len


def test_the_quick_suite_compiles_no_train_step_and_no_second_time():
    quick = SUITES["quick"]
    cases = expand(quick, _cpu_selection())
    assert not any(c.phase == "train_step" and c.mode == "compiled" for c in cases)
    assert {(c.variant, c.mode) for c in cases if c.phase == "train_step"} == {
        ("ours-fused", "eager")
    }
    assert not quick.warm_compile
    assert len(cases) == 2 * 2 * (4 + 2 + 1)  # shapes x frameworks x (eager, compiled, train)


def test_mesh_option_parses_any_plan_axis_and_fsdp_and_rejects_the_rest():
    assert parse_mesh("data=2,model=2") == MeshSpec.of({"data": 2, "model": 2})
    assert parse_mesh("data=2,fsdp") == MeshSpec((("data", 2),), fsdp=True)
    assert parse_mesh("model=4").name == "model=4"
    assert parse_mesh("model=4").sizes == {"data": 1, "model": 4, "seq": 1}
    assert parse_mesh("data=2,model=3").devices == 6
    assert MeshSpec().devices == 1 and MeshSpec().name == ""
    for bad in ("data=0", "pipe=2", "data=two", "fsdp=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected data=N,model=N"):
            parse_mesh(bad)
    with pytest.raises(ValueError, match="mesh axes must be among data, model, seq, got"):
        MeshSpec.of({"pipe": 2})


def test_a_mesh_adds_each_train_step_case_on_that_mesh_next_to_its_one_device_case():
    mesh = parse_mesh("data=2")
    cases = expand(SUITES["mesh"], _cpu_selection(meshes=(mesh,)))
    assert [(c.framework, c.mode, c.mesh.name) for c in cases] == [
        ("torch", "eager", ""),
        ("torch", "compiled", ""),
        ("jax", "eager", ""),
        ("jax", "compiled", ""),
        ("torch", "eager", "data=2"),
        ("torch", "compiled", "data=2"),
        ("jax", "eager", "data=2"),
        ("jax", "compiled", "data=2"),
    ]
    assert {(c.batch, c.seq_len, c.phase) for c in cases} == {(8, 128, "train_step")}
    quick = expand(SUITES["quick"], _cpu_selection(meshes=(mesh,)))
    meshed = [c for c in quick if c.mesh.devices > 1]
    assert meshed and all(c.phase == "train_step" for c in meshed)


def test_modernbert_presets_are_modernbert_base_and_its_all_global_twin():
    """ModernBERT-base's published shape (answerdotai/ModernBERT-base config.json: 22 layers,
    hidden 768, 12 heads, intermediate 1152 GeGLU, global_attn_every_n_layers 3,
    local_attention 128), and the same model with every layer global."""
    mb = suites.PRESETS["modernbert-base"]
    assert (mb.n_layers, mb.d_model, mb.n_heads, mb.d_ff) == (22, 768, 12, 1152)
    assert mb.gated_ffn and mb.activation == "gelu" and mb.positional == "rope"
    assert [i for i, kind in enumerate(mb.layer_kinds) if kind == "full_attention"] == list(
        range(0, 22, 3)
    )
    assert 2 * mb.sliding_window == 128
    glob = suites.PRESETS["modernbert-base-global"]
    assert glob.layer_kinds == ("full_attention",) * 22
    assert glob.replace(layer_types=mb.layer_types, rope_local_theta=mb.rope_local_theta) == mb


def test_with_layers_keeps_the_first_layers_and_their_pattern():
    mb = suites.PRESETS["modernbert-base"]
    three = suites.with_layers(mb, 3)
    assert three.n_layers == 3
    assert three.layer_kinds == ("full_attention", "sliding_attention", "sliding_attention")
    assert three.rope_local_theta == mb.rope_local_theta
    one = suites.with_layers(mb, 1)  # no sliding layer left: the local base goes too
    assert one.layer_kinds == ("full_attention",) and one.rope_local_theta is None
    assert suites.with_layers(suites.PRESETS["bert-base"], 2).n_layers == 2
    for bad in (0, 23):
        with pytest.raises(ValueError, match=r"n_layers must lie in \[1, 22\]"):
            suites.with_layers(mb, bad)


def test_modernbert_rows_of_the_standard_suite_run_with_its_config_only():
    """--config modernbert-base picks the standard suite's ModernBERT sweeps (ours only: no
    native rows, which cannot compute it); the suite's own config never runs them."""
    bert = expand(SUITES["standard"], _cpu_selection())
    modern = expand(SUITES["standard"], _cpu_selection(config="modernbert-base"))
    assert {c.variant for c in modern} == set(variants.OURS_VARIANTS)
    assert {(c.phase, c.mode) for c in modern} == {
        ("forward", "eager"),
        ("forward", "compiled"),
        ("train_step", "compiled"),
    }
    assert len(modern) == 5 * 2 * 3 * 3  # shapes x frameworks x variants x (phase, mode)
    assert "native" in {c.variant for c in bert}
    # another config runs the unpinned sweeps, as the suite's own does
    assert expand(SUITES["standard"], _cpu_selection(config="bert-large")) == bert


def test_layers_option_renames_the_config_and_rejects_more_layers_than_it_has(capsys):
    from benchmarks import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--suite", "long-window", "--layers", "23", "--out", "/nonexistent/x"])
    assert exit_info.value.code == 2
    assert "n_layers must lie in [1, 22]" in capsys.readouterr().err


def test_long_window_suite_runs_flash_in_both_frameworks_and_spares_torchs_global_8192():
    suite = SUITES["long-window"]
    window = expand(suite, _cpu_selection())
    assert [(c.framework, c.mode, c.seq_len) for c in window] == [
        (fw, mode, t)
        for t in (2048, 4096, 8192)
        for fw, mode in (("torch", "eager"), ("jax", "compiled"))
    ]
    assert {(c.variant, c.phase, c.batch) for c in window} == {("ours-flash", "forward", 1)}
    glob = expand(suite, _cpu_selection(config="modernbert-base-global"))
    assert [(c.framework, c.seq_len) for c in glob] == [
        ("torch", 2048), ("jax", 2048), ("torch", 4096), ("jax", 4096), ("jax", 8192)
    ]  # fmt: skip
    on_gpu = expand(suite, Selection(("torch", "jax"), "gpu", config="modernbert-base-global"))
    assert len(on_gpu) == 6


def test_native_variant_refuses_what_its_modules_cannot_compute():
    """The native stack has no RoPE, GLU, GQA, RMSNorm, windows or bias-free layers: such a
    config is refused by name (the command line turns it into a usage error)."""
    from benchmarks import peers

    native = variants.REGISTRY["native"]
    assert peers.config_problem(native, suites.PRESETS["bert-base"]) is None
    assert "rotary" in peers.config_problem(native, suites.PRESETS["modernbert-base"])
    plain = suites.PRESETS["bert-base"]
    for change, name in (
        (dict(gated_ffn=True), "gated_ffn"),
        (dict(n_kv_heads=4), "n_kv_heads"),
        (dict(norm="rms_norm", norm_bias=False), "norm"),
        (dict(sliding_window=8), "sliding_window"),
        (dict(attention_bias=False), "attention_bias"),
        (dict(causal=True), "causal"),
        (dict(activation="silu"), "silu"),
    ):
        assert name in peers.config_problem(native, plain.replace(**change)), change
    for name in ("hf", "keras"):
        assert peers.config_problem(variants.REGISTRY[name], suites.PRESETS["modernbert-base"])
