"""The peers: the same encoder as other libraries build it, from the same format-v1 weights.

* ``hf`` (:mod:`benchmarks.peers.hf`): ``transformers.BertModel`` in PyTorch, written by
  ``shared.hf.save`` and read back by ``AutoModel.from_pretrained``; ``attn_implementation``
  "sdpa" (variant ``hf``) or "eager" (``hf-eager``, attention written out).
* ``keras`` (:mod:`benchmarks.peers.keras`): keras-hub's ``BertBackbone`` on Keras 3, its
  variables assigned through the table of ``shared/keras_hub.py``, on the JAX backend (a
  jitted pure function of its variables, ``stateless_call``) or the torch backend (the
  backbone is a ``torch.nn.Module``). Keras reads its backend once per process, from
  ``KERAS_BACKEND``: every keras row runs in a child process of its own
  (:func:`run_in_child`), which also measures that row's parity.

Every peer row runs on the same token ids, with no padding, in the same dtype and matmul
precision, timed by the same harness as ours; its parity is ``max |peer - ours|`` of the
last hidden state, against ours (``PARITY_REFERENCE``) in the same framework, within the
tolerance of ``shared/tolerances.py`` for the dtype.

This module needs neither torch, JAX, transformers nor keras until a row runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.variants import PARITY_REFERENCE, Variant

__all__ = [
    "CHILD_TIMEOUT_S",
    "case_framework",
    "child",
    "config_problem",
    "missing",
    "parity",
    "run_in_child",
]

_REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 1800  # a keras row's child process is ended after this long
# the modules each peer imports, beyond its framework
_MODULES = {"transformers": ("transformers",), "keras_hub": ("keras", "keras_hub")}


def missing(v: Variant) -> str | None:
    """Why the peer ``v`` cannot be built here (a package not installed), or None.

    Looks for the modules without importing them (keras picks its backend on import).
    """
    for module in _MODULES.get(v.package, ()) if v.package else ():
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install the peers extra, see the Makefile)"
    return None


def config_problem(v: Variant, cfg) -> str | None:
    """Why the peer ``v`` cannot compute the encoder ``cfg`` (its model has no such
    option), or None. NumPy only: checked before any framework is imported."""
    if v.implementation == "hf":
        from shared.hf import bert

        check = bert.FAMILY.export_config
    elif v.implementation == "keras":
        from shared import keras_hub

        check = keras_hub.backbone_kwargs
    elif v.implementation == "native":
        from benchmarks.variants import native_config_problem

        return native_config_problem(cfg)
    else:
        return None
    try:
        check(cfg)
    except ValueError as e:
        return str(e)
    return None


def parity(runner, name: str, cfg, weights: dict, dtype: str, ids) -> dict[str, Any]:
    """``{"max_abs_diff", "ok", "bound"}``: the peer ``name``'s last hidden state against
    ours (``PARITY_REFERENCE``), both from ``runner`` (one framework), same weights and ids."""
    import numpy as np

    from shared.tolerances import max_abs_diff, tolerance

    ours = runner.forward_output(PARITY_REFERENCE, cfg, weights, dtype, ids)
    runner.release()
    peer = runner.forward_output(name, cfg, weights, dtype, ids)
    runner.release()
    diff = max_abs_diff(peer, ours)
    bound = tolerance(dtype, runner.device_kind).bound(ours)
    ok = bool(np.all(np.isfinite(peer))) and diff <= bound
    return {"max_abs_diff": diff, "ok": ok, "bound": bound}


# --- a row in a child process (keras) ----------------------------------------------------------


def run_in_child(case, cfg, settings) -> tuple[Any, list[str], dict[str, Any]]:
    """Measure ``case`` in a child process whose ``KERAS_BACKEND`` is the case's framework:
    ``(Measurement, notes, parity)`` (parity as :func:`parity` gives it)."""
    payload = json.dumps(
        {
            "case": {**dataclasses.asdict(case), "mesh": case.mesh.name},
            "cfg": cfg.to_json(),
            "settings": dataclasses.asdict(settings),
        }
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    env["KERAS_BACKEND"] = case.framework
    code = "import sys; from benchmarks.peers import child; print(child(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, payload],
        env=env,
        cwd=_REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{case.variant} on {case.framework} (child process) failed:\n{done.stderr[-3000:]}"
        )
    record = json.loads(done.stdout.strip().splitlines()[-1])
    from benchmarks.mesh import _measurement

    return _measurement(record["measurement"]), record["notes"], record["parity"]


def child(payload: str) -> str:
    """In the child: the parity check, then the row timed, as JSON on one line."""
    from benchmarks.mesh import _child_setup
    from benchmarks.runner import make_input_ids, measure_case
    from shared import reference

    case, cfg, settings = _child_setup(payload, case_framework(payload))
    if case.framework == "jax":
        from benchmarks.run_jax import JaxRunner

        runner = JaxRunner(case.device)
    else:
        from benchmarks.run_torch import TorchRunner

        runner = TorchRunner(case.device, threads=settings.threads)
    weights = reference.init_weights(cfg, settings.seed)
    ids = make_input_ids(cfg, case.batch, case.seq_len, settings.seed)
    check = parity(runner, case.variant, cfg, weights, case.dtype, ids)
    if case.mode == "compiled":
        runner.warm_up_compiler()  # as the parent does once, before its rows
    m, notes = measure_case(case, cfg, weights, ids, runner, settings)
    return json.dumps({"measurement": dataclasses.asdict(m), "notes": notes, "parity": check})


def case_framework(payload: str) -> str:
    """The framework of the case in ``payload`` (the child imports only that one)."""
    return json.loads(payload)["case"]["framework"]
