"""Why JAX's train step trails on the CPU: the feed-forward block's backward pass, measured.

    python -m studies.ffn_backward

Times ``sum(act(x @ W1) @ W2)`` under ``jax.jit``, forward and forward + backward, with the
BERT-base FFN shapes (B=8, T=128, D=768, F=3072), for each activation, once with ``x`` as
(B, T, D) and once as (B*T, D) rows, and PyTorch's eager autograd beside it. The analytic
ratio of forward + backward to forward is 3. XLA:CPU meets it on 2-D rows but not on the 3-D
form when an activation's derivative sits between the matmuls, which is why both
``FeedForward`` modules flatten positions to rows.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl.precision
import torch_impl.precision
from benchmarks.harness import summarize, time_calls

ACTIVATIONS = {
    "identity": (lambda h: h, lambda h: h),
    "relu": (jax.nn.relu, torch.relu),
    "gelu": (lambda h: jax.nn.gelu(h, approximate=False), torch.nn.functional.gelu),
    "gelu_tanh": (
        lambda h: jax.nn.gelu(h, approximate=True),
        lambda h: torch.nn.functional.gelu(h, approximate="tanh"),
    ),
}


def _median_ms(fn, args: tuple, repeats: int, sync=jax.block_until_ready) -> float:
    """Median wall time of ``sync(fn(*args))`` after one warm-up call (which compiles), timed
    by the benchmark harness."""
    sync(fn(*args))
    return 1e3 * summarize(time_calls(lambda: fn(*args), sync, repeats)).median


def _jax_loss(act):
    return lambda x, w1, w2: (act(x @ w1) @ w2).sum()


def _torch_forward(act):
    def forward(x, w1, w2):
        with torch.no_grad():
            return (act(x @ w1) @ w2).sum()

    return forward


def _torch_forward_backward(act):
    def forward_backward(x, w1, w2):
        for v in (x, w1, w2):
            v.grad = None
        (act(x @ w1) @ w2).sum().backward()

    return forward_backward


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    jax_impl.precision.set_matmul_precision("float32")
    torch_impl.precision.set_matmul_precision("float32")
    b, t, d, f = 8, 128, 768, 3072
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, t, d)).astype(np.float32)
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(
        f"{'activation':10s} {'framework, x':16s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'ratio':>6s}"
    )
    for name, (act_j, act_t) in ACTIVATIONS.items():
        rows = []
        for layout, shape in (("(B, T, D)", (b, t, d)), ("(B*T, D)", (b * t, d))):
            operands = (jnp.asarray(x.reshape(shape)), jnp.asarray(w1), jnp.asarray(w2))
            loss = _jax_loss(act_j)
            fwd = _median_ms(jax.jit(loss), operands, args.repeats)
            both = _median_ms(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), operands, args.repeats)
            rows.append((f"jax {layout}", fwd, both))
        operands = tuple(torch.tensor(v, requires_grad=True) for v in (x, w1, w2))
        fwd = _median_ms(_torch_forward(act_t), operands, args.repeats, sync=lambda _: None)
        both = _median_ms(
            _torch_forward_backward(act_t), operands, args.repeats, sync=lambda _: None
        )
        rows.append(("torch (B, T, D)", fwd, both))
        for label, fwd, both in rows:
            print(f"{name:10s} {label:16s} {fwd:8.1f} {both:11.1f} {both / fwd:6.1f}")


if __name__ == "__main__":
    main()
