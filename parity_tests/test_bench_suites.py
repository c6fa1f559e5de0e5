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
