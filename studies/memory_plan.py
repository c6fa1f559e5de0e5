"""XLA's own memory plan of the jitted loss-and-gradient of the JAX encoder, per attention backend.

    python -m studies.memory_plan [--seq-len 2048] [--config bert-base]

Prints, for each backend, the sizes XLA's buffer assignment gives the compiled program
(``jax.jit(...).lower(...).compile().memory_analysis()``): arguments (the parameters),
outputs (their gradients) and temporaries (the activations kept for the backward and
scratch). No timing: the figures are the compiler's plan, the same on any CPU.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_impl
from benchmarks.suites import load_config
from shared import BACKENDS


def compiled(cfg, backend: str, batch: int, seq_len: int, *, remat: str = "none", options=None):
    """XLA's compiled jit(value_and_grad(loss)) of the encoder with ``backend`` and ``remat``
    (``shared.backends.REMATS``), for a random (batch, seq_len) batch of ids, with XLA's
    compiler ``options`` (None: its defaults; ``jax_impl.train.compiler_options``)."""
    model = jax_impl.TransformerEncoder(cfg, backend=backend, remat=remat, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len)))

    def loss(params):
        return (nnx.merge(graphdef, params, rest)(ids) ** 2).mean()

    return jax.jit(jax.value_and_grad(loss), compiler_options=options).lower(params).compile()


def plan(cfg, backend: str, batch: int, seq_len: int, *, remat: str = "none") -> dict[str, int]:
    """Bytes of arguments, outputs and temporaries of jit(value_and_grad(loss)), with the
    model's ``remat`` policy (``shared.backends.REMATS``)."""
    m = compiled(cfg, backend, batch, seq_len, remat=remat).memory_analysis()
    return {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bert-base", help="preset or JSON file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--backends", default="math,flash", help=f"from {','.join(BACKENDS)}")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    _, cfg = load_config(args.config)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.seq_len))
    print(f"config {args.config}, B={args.batch}, T={args.seq_len}, float32, jax {jax.__version__}")
    for backend in args.backends.split(","):
        sizes = plan(cfg, backend, args.batch, args.seq_len)
        per_token = sizes["temporaries"] / (args.batch * args.seq_len * cfg.n_layers * 4)
        print(
            f"{backend:6s} arguments {sizes['arguments'] / 2**20:8,.0f} MiB   "
            f"outputs {sizes['outputs'] / 2**20:8,.0f} MiB   "
            f"temporaries {sizes['temporaries'] / 2**20:8,.0f} MiB "
            f"({per_token / cfg.d_model:.1f} x d_model floats per token per layer)"
        )


if __name__ == "__main__":
    main()
