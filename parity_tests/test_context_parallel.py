"""Context parallelism: attention over a sequence split on a "seq" mesh axis, against one device.

Also whole encoders parallelized with ``parallelize(..., context=, load_balance=)``: their
outputs and every parameter gradient against one device (float32 row), and, in PyTorch,
the bytes their collectives sent against ``shared.parallel.context_bytes``.

Both frameworks, seq=2 and seq=4, all-gather and ring, with and without load balancing,
full and causal attention, with ragged padding: outputs and dq, dk, dv against the
single-device flash kernel within the float32 row of shared/tolerances.py, and the number
of collective steps. JAX's cases (parity_tests/context_jax_cases.py) run in a child pytest
with 4 host devices; PyTorch's in gloo processes started by ``torch_impl.parallel.launch``
(the workers live in parity_tests/context_torch_workers.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from parity_tests import context_torch_workers as W
from parity_tests.helpers import run_jax_cases
from shared import parallel as plan
from shared.tolerances import assert_close, tolerance
from torch_impl import parallel
from torch_impl.flash import flash_attention
from torch_impl.weights import from_weights

ROOT = Path(__file__).resolve().parent.parent
F32 = tolerance("float32")


# ---------------------------------------------------------------------------------------------
# The chunk order, in the shared plan


def test_seq_positions_are_contiguous_shards_or_chunks_r_and_2w_minus_1_minus_r():
    """T = 16 on W = 4: shards of 4; load-balanced, 8 chunks of 2 and rank r holds chunks r
    and 7 - r."""
    assert plan.seq_positions(16, 4, 1).tolist() == [4, 5, 6, 7]
    assert plan.seq_positions(16, 4, 0, load_balance=True).tolist() == [0, 1, 14, 15]
    assert plan.seq_positions(16, 4, 3, load_balance=True).tolist() == [6, 7, 8, 9]
    assert plan.seq_order(8, 2, load_balance=True).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    order = plan.seq_order(24, 3, load_balance=True)
    assert sorted(order.tolist()) == list(range(24))  # every position exactly once


def test_bad_seq_splits_name_what_was_expected_and_what_was_got():
    with pytest.raises(ValueError, match="seq_len=10 is not divisible by the mesh's seq=4"):
        plan.check_seq_split(10, 4)
    with pytest.raises(ValueError, match=r"seq_len=12 is not divisible by the mesh's 2 \* seq = 8"):
        plan.seq_positions(12, 4, 0, load_balance=True)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        plan.seq_positions(8, 2, 2)
    with pytest.raises(ValueError, match=r"mesh data=2 x model=1 x seq=4 needs 8 devices, got 4"):
        plan.check_mesh(plan.AXES, (2, 1, 4), ["cpu:0", "cpu:1", "cpu:2", "cpu:3"])
    assert plan.AXES == ("data", "model", "seq")
    assert ("length", "seq") in plan.ACTIVATIONS


# ---------------------------------------------------------------------------------------------
# PyTorch: 2 and 4 gloo processes


@pytest.fixture(scope="module", params=[2, 4], ids=["seq2", "seq4"])
def torch_run(request, tmp_path_factory):
    """Every PyTorch case on a seq mesh of ``seq`` processes, in one launch: (folder, seq)."""
    seq = request.param
    folder = tmp_path_factory.mktemp(f"context-torch-{seq}")
    parallel.launch(W.run_cases, seq, str(folder), seq, timeout_s=300)
    return folder, seq


def _gather(folder: Path, name: str, key: str, shape) -> np.ndarray:
    """The whole (B, H, T, hd) array of ``key`` from the ranks' rows, heads and positions."""
    whole = np.full(shape, np.nan, dtype=np.float32)
    files = sorted(folder.glob(f"{name}-*.npz"))
    for f in files:
        part = np.load(f)
        rows, heads, positions = part["rows"], part["heads"], part["positions"]
        whole[np.ix_(rows, heads, np.arange(shape[2])[positions])] = part[key]
    return whole


def one_device(causal: bool, t: int = W.T, ragged: bool = True):
    """Output and dq, dk, dv of the single-device flash kernel on the whole sequence."""
    q, k, v, w, real = (torch.from_numpy(a) for a in W.inputs(t=t, ragged=ragged))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = flash_attention(q, k, v, key_padding_mask=real, is_causal=causal)
    (out * w).sum().backward()
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


@pytest.mark.parametrize(("method", "load_balance", "causal"), W.CASES)
def test_torch_context_parallel_outputs_and_gradients_equal_one_device(
    torch_run, method, load_balance, causal
):
    folder, seq = torch_run
    name = W.case_name(method, load_balance, causal)
    want = one_device(causal)
    for key in ("out", "dq", "dk", "dv"):
        got = _gather(folder, name, key, want[key].shape)
        assert_close(got, want[key].numpy(), F32, f"{key}, {name}, seq={seq}")


@pytest.mark.parametrize(("method", "load_balance", "causal"), W.CASES)
def test_torch_collective_steps(torch_run, method, load_balance, causal):
    """The ring: W - 1 steps forward (K, V, padding, positions passed on), W backward (the
    same W - 1, then dK and dV home). All-gather: 4 gathers forward (K, V, padding,
    positions), 2 all-reduces backward (dK, dV)."""
    folder, seq = torch_run
    for f in sorted(folder.glob(f"{W.case_name(method, load_balance, causal)}-*.npz")):
        part = np.load(f)
        counts = {k: int(part[k]) for k in part.files if k.startswith(("forward_", "backward_"))}
        counts = {k: n for k, n in counts.items() if n and not k.endswith(("_scores", "_bytes"))}
        if method == "ring":
            assert counts == {"forward_ring_step": seq - 1, "backward_ring_step": seq}
        else:
            assert counts == {"forward_all_gather": 4, "backward_all_reduce": 2}


def test_torch_meshes_with_data_or_model_beside_seq_equal_one_device(torch_run):
    """data=2 x seq=2 (each data rank its sequences) and model=2 x seq=2 (each model rank its
    heads), ring, load-balanced, causal."""
    folder, seq = torch_run
    if seq != 4:
        pytest.skip("needs 4 processes; runs in the seq4 launch")
    want = one_device(True)
    for name in ("data2-model1-seq2", "data1-model2-seq2"):
        for key in ("out", "dq", "dk", "dv"):
            got = _gather(folder, name, key, want[key].shape)
            assert_close(got, want[key].numpy(), F32, f"{key}, {name}")


def test_load_balancing_evens_the_causal_work_across_ranks(torch_run):
    """Score entries each rank computes in the causal ring forward, T = 32, no padding.

    Contiguous shards of n = T/W rows: rank r's queries see the blocks of ranks 0..r, r of
    them whole and its own (a diagonal block, computed whole), so (r + 1) n^2 entries; the
    last rank does W n^2, W/((W+1)/2) times the mean. Load-balanced chunks of c = T/2W rows:
    its own block gives 3 chunk pairs (the pair of its early queries with its late keys is
    skipped) and every other block 2 of the 4 pairs, so (2W + 1) c^2 on every rank. W = 4:
    256 -> 144 entries on the busiest rank (1.78x less); W = 2: 512 -> 320 (1.6x)."""
    folder, seq = torch_run
    n, c = 32 // seq, 32 // (2 * seq)
    for name, want in (
        ("work-plain", {r: (r + 1) * n * n for r in range(seq)}),
        ("work-lb", {r: (2 * seq + 1) * c * c for r in range(seq)}),
    ):
        got = {}
        for f in sorted(folder.glob(f"{name}-*.npz")):
            part = np.load(f)
            got[int(part["seq_rank"])] = int(part["forward_scores"])
        assert got == want, name
    want = one_device(True, t=32, ragged=False)
    for name in ("work-plain", "work-lb"):
        got = _gather(folder, name, "out", want["out"].shape)
        assert_close(got, want["out"].numpy(), F32, f"out, {name}")


def one_device_encoder(name: str):
    """The whole encoder of a model case on one process: h (B, T, D) and every gradient."""
    config, _, _, causal, _ = W.MODEL_CASES[name]
    cfg = W.CONFIGS[config]
    ids, mask, w = W.model_inputs(cfg)
    model = from_weights(W.model_weights(cfg), cfg)
    h = model(ids, mask, is_causal=causal)
    (h * torch.from_numpy(w)).sum().backward()
    return h.detach().numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(W.MODEL_CASES))
def test_torch_encoder_on_a_seq_mesh_equals_one_device(torch_run, name):
    """A whole encoder parallelized with ``context=`` (ring or all-gather, load-balanced
    causal or contiguous full, ragged padding; the modern case with RoPE, GQA and a sliding
    window): each rank's rows of h, and every parameter's gradient summed over the seq
    group, against one process."""
    folder, seq = torch_run
    if seq not in W.MODEL_CASES[name][4]:
        pytest.skip(f"{name} runs in the seq{W.MODEL_CASES[name][4][0]} launch")
    want_h, want_grads = one_device_encoder(name)
    got_h = np.full(want_h.shape, np.nan, dtype=np.float32)
    files = sorted(folder.glob(f"{name}-*.npz"))
    assert len(files) == seq
    for f in files:
        part = np.load(f)
        got_h[:, part["positions"]] = part["h"]
    assert_close(got_h, want_h, F32, f"h, {name}, seq={seq}")
    grads = np.load(folder / f"{name}-0.npz")
    assert sorted(k.removeprefix("grad:") for k in grads.files if k.startswith("grad:")) == sorted(
        want_grads
    )
    for key, want in want_grads.items():
        assert_close(grads[f"grad:{key}"], want, F32, f"grad {key}, {name}, seq={seq}")


def test_context_bytes_by_hand_for_a_tiny_case():
    """B=2, T=16, D=16 in 2 heads of hd=8 (2 K/V heads), 2 layers, float32, seq=2 (n = 8
    positions a device). Ring, per layer: one step forward of K, V (2*2*2*8*8 = 512 float32
    = 2048 B), the mask (2*8 = 16 B) and the positions (8 int64 = 64 B): 2128 B; backward the
    same step and 2 steps of dK, dV (2 * 2048 B): 6224 B. All-gather: the whole K, V (4096
    B), mask (32 B) and positions (128 B) gathered, 4256 B; dK, dV reduced, 4096 B."""
    cfg = W.MODEL
    ring = plan.context_bytes(cfg, batch=2, seq_len=16, seq=2, method="ring")
    assert ring == {"forward": 2 * 2128, "backward": 2 * (2128 + 2 * 2048)}
    gather = plan.context_bytes(cfg, batch=2, seq_len=16, seq=2, method="all_gather")
    assert gather == {"forward": 2 * 4256, "backward": 2 * 4096}
    # data=2 halves every per-device tensor but the positions; bfloat16 K/V still travel
    # in the ring as float32, and gather in bfloat16
    half = plan.context_bytes(cfg, batch=4, seq_len=16, seq=2, data=2, bytes_per_element=2)
    assert half == ring
    gather16 = plan.context_bytes(
        cfg, batch=2, seq_len=16, seq=2, method="all_gather", bytes_per_element=2
    )
    assert gather16 == {"forward": 2 * (2048 + 32 + 128), "backward": 2 * 2048}
    assert plan.context_bytes(cfg, batch=2, seq_len=16, seq=1) == {"forward": 0, "backward": 0}
    with pytest.raises(ValueError, match="method must be one of"):
        plan.context_bytes(cfg, batch=2, seq_len=16, seq=2, method="tree")


def test_benchmark_meshes_take_seq_and_the_context_method():
    """``--mesh seq=2[,context=all_gather]``: the method is part of the mesh's name; a row's
    collective bytes are the gradients' all-reduce (every parameter, float32, summed over
    the seq ranks) plus context parallelism's, by hand above."""
    from benchmarks import mesh as meshes

    both = meshes.parse_mesh("data=2,seq=2,context=all_gather")
    assert (both.name, both.devices) == ("data=2,seq=2,context=all_gather", 4)
    assert meshes.parse_mesh("seq=2").name == "seq=2,context=ring"
    assert meshes.parse_mesh("data=2,context=all_gather").name == "data=2"
    assert meshes.parse_mesh(both.name) == both  # rows' names parse back (child processes)
    params = sum(a.size for a in W.model_weights(W.MODEL).values())
    got = meshes.collective_bytes(W.MODEL, meshes.parse_mesh("seq=2"), batch=2, seq_len=16)
    assert got == 4 * params + 2 * 2128 + 2 * (2128 + 2 * 2048)
    with pytest.raises(ValueError, match="seq_len=14 is not divisible by the mesh's seq=4"):
        meshes.check(meshes.parse_mesh("seq=4"), W.MODEL, 2, 14)
    with pytest.raises(ValueError, match="expected no fsdp with seq > 1"):
        meshes.check(meshes.parse_mesh("data=2,seq=2,fsdp"), W.MODEL, 2, 16)


@pytest.mark.parametrize("name", list(W.MODEL_CASES))
def test_torch_context_bytes_equal_what_the_encoder_sent(torch_run, name):
    """Every rank's collectives (bytes of each ring step's tensors, of each gathered and
    reduced tensor) during the encoder's forward and backward, against
    ``shared.parallel.context_bytes``."""
    folder, seq = torch_run
    config, method, _, _, sizes = W.MODEL_CASES[name]
    if seq not in sizes:
        pytest.skip(f"{name} runs in the seq{sizes[0]} launch")
    want = plan.context_bytes(W.CONFIGS[config], batch=W.B, seq_len=W.T, seq=seq, method=method)
    for f in sorted(folder.glob(f"{name}-*.npz")):
        part = np.load(f)
        got = {"forward": int(part["forward_bytes"]), "backward": int(part["backward_bytes"])}
        assert got == want, f.name


def test_torch_bad_splits_and_arguments_name_what_was_expected_and_what_was_got(torch_run):
    folder, seq = torch_run
    errors = {k: str(v) for k, v in np.load(folder / "errors.npz").items()}
    assert errors["split"].startswith(
        f"seq_len={2 * seq + 2} is not divisible by the mesh's 2 * seq = {2 * seq} chunks"
    )
    assert errors["method"] == "method must be one of ('ring', 'all_gather'), got 'tree'"
    assert errors["positions"] == "positions must have shape (2,), got (3,)"
    assert errors["mesh"].startswith(f"mesh data=1 x model=1 x seq={2 * seq} needs {2 * seq}")
    assert errors["weights"].startswith("context parallelism never forms the (T, T) weights")
    assert "not a general mask: expected mask=None, got a mask of shape" in errors["general_mask"]
    assert errors["pad_positions"].startswith("position_pad_id=1 counts positions over the")
    assert errors["fsdp"].endswith("expected fsdp=False with seq > 1")
    assert errors["context"] == "method must be one of ('ring', 'all_gather'), got 'tree'"


# ---------------------------------------------------------------------------------------------
# JAX: 4 host devices, in a child process


def test_jax_context_parallel_on_4_host_devices_equals_one_device(tmp_path):
    """Outputs and gradients of every case on seq=2 and seq=4 meshes, data=2 x seq=2 and
    model=2 x seq=2, and the ppermute / all_gather equations of each program; whole
    encoders (h and every parameter gradient) on seq=2 and data=2 x seq=2."""
    rc, log = run_jax_cases("context_jax_cases.py")
    assert rc == 0, log[-6000:]
    assert " passed" in log and "failed" not in log and "skipped" not in log, log[-3000:]
