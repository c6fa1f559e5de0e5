"""What to measure: model presets, the three suites, and their expansion into cases.

A :class:`Case` is one row of the results: one framework running one variant of the model
(``benchmarks.variants``: ours with one attention backend of ``shared/backends.py``, or a
peer such as the framework's native modules) in one mode (eager or compiled) for one phase
(forward, forward + backward, or a whole AdamW train step) at one shape and dtype, on one
device or on a device mesh (``benchmarks.mesh``). A :class:`Suite` is a few :class:`Sweep` blocks, each the
cross product of its axes, so that expensive corners (an eager train step at long
sequences on a CPU) can be left out without leaving out everything else.

This module needs neither torch nor JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from benchmarks.mesh import MeshSpec
from benchmarks.variants import OURS_VARIANTS, PEER_VARIANTS, VARIANTS
from benchmarks.variants import variant as lookup_variant
from shared.backends import REMATS
from shared.config import MODERNBERT_BASE, EncoderConfig
from shared.flops import PHASES

__all__ = [
    "DEVICES",
    "DTYPES",
    "FRAMEWORKS",
    "MODES",
    "OURS_VARIANTS",
    "PRESETS",
    "SUITES",
    "VARIANTS",
    "Case",
    "Selection",
    "Suite",
    "Sweep",
    "batch_for",
    "expand",
    "load_config",
    "max_len_for",
    "remat_applies",
    "suite_sweeps",
    "variant_parts",
    "with_layers",
]

FRAMEWORKS = ("torch", "jax")
DEVICES = ("cpu", "gpu", "tpu")
DTYPES = ("float32", "bfloat16")
MODES = ("eager", "compiled")


def variant_parts(name: str) -> tuple[str, str]:
    """``"ours-fused"`` -> ``("ours", "fused")``; ``"native"`` -> ``("native", "native")``."""
    v = lookup_variant(name)
    return v.implementation, v.backend


# --- model presets ---------------------------------------------------------------------------

# Every preset has dropout 0: dropout draws random numbers differently in each framework and
# would make the two runs different computations. max_len is raised to the longest sequence
# of a run (see expand), so that positions never run out.
_BERT = dict(
    vocab_size=30522,  # BERT's WordPiece vocabulary
    positional="learned",
    type_vocab_size=2,
    embed_norm=True,
    layer_norm_eps=1e-12,
    activation="gelu",
    norm_first=False,
    dropout=0.0,
    max_len=512,
)
PRESETS: dict[str, EncoderConfig] = {
    # the design's example model
    "tiny": EncoderConfig(
        vocab_size=1000, d_model=64, n_heads=4, d_ff=256, n_layers=2, max_len=128, dropout=0.0
    ),
    # big enough that matrix products dominate, small enough for a 2-core CPU in seconds
    "small": EncoderConfig(
        vocab_size=8192, d_model=256, n_heads=4, d_ff=1024, n_layers=4, max_len=512, dropout=0.0
    ),
    # BERT-base's layer shapes and embeddings, with 6 layers instead of 12
    "bert-base": EncoderConfig(d_model=768, n_heads=12, d_ff=3072, n_layers=6, **_BERT),
    # bert-base with GELU's tanh approximation, the activation of keras-hub's BertBackbone:
    # the config on which every peer computes the same function (the peers suite)
    "bert-base-tanh": EncoderConfig(
        d_model=768, n_heads=12, d_ff=3072, n_layers=6, **{**_BERT, "activation": "gelu_tanh"}
    ),
    # BERT-large's shapes, all 24 layers
    "bert-large": EncoderConfig(d_model=1024, n_heads=16, d_ff=4096, n_layers=24, **_BERT),
    # ModernBERT-base (Warner et al. 2024), all 22 layers: RoPE, GeGLU, no biases, global
    # attention in every third layer from layer 0 and a window of 128 (keys |i - j| <= 64)
    # in the others
    "modernbert-base": MODERNBERT_BASE,
    # the same model with every layer global: what the windows save
    "modernbert-base-global": MODERNBERT_BASE.replace(
        layer_types=("full_attention",) * MODERNBERT_BASE.n_layers, rope_local_theta=None
    ),
}


def load_config(spec: str) -> tuple[str, EncoderConfig]:
    """A preset name, or the path of a JSON file of ``EncoderConfig`` fields -> (name, config).

    A file's config is used as written (only ``max_len`` may be raised later); its name in
    the results is the file's stem.
    """
    if spec in PRESETS:
        return spec, PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file"
        )
    return path.stem, EncoderConfig.from_json(path.read_text())


def with_layers(cfg: EncoderConfig, n_layers: int) -> EncoderConfig:
    """``cfg`` with its first ``n_layers`` layers only (``--layers``): the layer pattern
    (``layer_types``) cut to match, and the local RoPE base dropped when no sliding layer is
    left. ValueError unless 1 <= n_layers <= cfg.n_layers."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int):
        raise ValueError(f"n_layers must be an int, got {n_layers!r}")
    if not 1 <= n_layers <= cfg.n_layers:
        raise ValueError(
            f"n_layers must lie in [1, {cfg.n_layers}] for this config, got {n_layers}"
        )
    types = None if cfg.layer_types is None else cfg.layer_types[:n_layers]
    local = cfg.rope_local_theta
    if types is not None and "sliding_attention" not in types:
        local = None  # only sliding layers read it, and none is left
    return cfg.replace(n_layers=n_layers, layer_types=types, rope_local_theta=local)


# --- suites ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One block of a suite: every combination of its phases, variants and modes, at every
    shape of the suite (or at ``batches`` at the suite's first sequence length).

    ``config`` pins the sweep to one preset: it runs only when the run's ``--config`` is that
    preset, and then the suite's unpinned sweeps do not run (they are for the suite's own
    config). Unpinned sweeps (``None``) run on the suite's config or any other ``--config``.
    """

    phases: tuple[str, ...]
    variants: tuple[str, ...]
    modes: tuple[str, ...]
    max_seq_len: int | None = None  # leave out longer sequences (on CPUs only)
    batches: tuple[int, ...] | None = None  # a batch sweep instead of the sequence sweep
    frameworks: tuple[str, ...] | None = None  # only these of the run's frameworks
    config: str | None = None  # a preset: this sweep's rows run with --config PRESET only


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named set of sweeps over one model config.

    Shapes: each sequence length ``T`` of ``seq_lens`` runs at batch
    ``clamp(tokens_per_batch // T, 1, max_batch)``, so that long sequences shrink the batch
    instead of the run taking hours. Accelerators get their own, larger, numbers.
    """

    name: str
    description: str
    config: str
    dtypes: tuple[str, ...]
    sweeps: tuple[Sweep, ...]
    seq_lens: dict[str, tuple[int, ...]]  # "cpu" and "accelerator"
    tokens_per_batch: dict[str, int]
    max_batch: dict[str, int]
    repeats: int  # timed calls per row (fewer when one call is slow, see budget_s)
    warmup: int  # untimed calls before the timed ones (after compilation)
    budget_s: float  # aim for at most this many seconds of timed calls per row
    warm_compile: bool = True  # compile each compiled row a second time, from warm caches


def batch_for(seq_len: int, *, tokens_per_batch: int, max_batch: int) -> int:
    """The batch size at ``seq_len``: about ``tokens_per_batch`` tokens, at least 1."""
    return max(1, min(max_batch, tokens_per_batch // seq_len))


# ours and native; the peers (another library's model) run in the peers suite
_ALL_VARIANTS = tuple(v for v in VARIANTS if v not in PEER_VARIANTS)
# The sequence-length sweep of the standard and full suites, and their batch rule.
_SWEEP_SEQ_LENS = {
    "cpu": (128, 256, 512, 1024, 2048),
    "accelerator": (128, 256, 512, 1024, 2048, 4096, 8192),
}
_SWEEP_TOKENS_PER_BATCH = {"cpu": 1024, "accelerator": 8192}
_MAX_BATCH = {"cpu": 8, "accelerator": 32}

# ModernBERT in the standard suite (--config modernbert-base): every backend of ours (the
# native modules and the peers have no RoPE, GLU or windows), forward eager and compiled,
# and the compiled train step
_MODERNBERT_SWEEPS = (
    Sweep(phases=("forward",), variants=OURS_VARIANTS, modes=MODES, config="modernbert-base"),
    Sweep(
        phases=("train_step",),
        variants=OURS_VARIANTS,
        modes=("compiled",),
        config="modernbert-base",
    ),
)
# flash in both frameworks, one forward at a time
_LONG_WINDOW_SWEEPS = (
    Sweep(phases=("forward",), variants=("ours-flash",), modes=("eager",), frameworks=("torch",)),
    Sweep(phases=("forward",), variants=("ours-flash",), modes=("compiled",), frameworks=("jax",)),
)

SUITES: dict[str, Suite] = {
    "quick": Suite(
        name="quick",
        description=(
            "small config, two shapes: forward of every variant eager, math and fused "
            "compiled; eager train step (no torch.compile of a train step: its cold compile "
            "alone takes tens of seconds on a CPU); cold compile times only"
        ),
        config="small",
        dtypes=("float32",),
        sweeps=(
            Sweep(phases=("forward",), variants=_ALL_VARIANTS, modes=("eager",)),
            Sweep(phases=("forward",), variants=("ours-math", "ours-fused"), modes=("compiled",)),
            Sweep(phases=("train_step",), variants=("ours-fused",), modes=("eager",)),
        ),
        seq_lens={"cpu": (64, 256), "accelerator": (128, 512)},
        tokens_per_batch={"cpu": 512, "accelerator": 8192},
        max_batch=_MAX_BATCH,
        repeats=5,
        warmup=1,
        budget_s=1.0,
        warm_compile=False,
    ),
    "standard": Suite(
        name="standard",
        description=(
            "BERT-base-like config, sequence-length sweep: math vs fused attention, "
            "eager vs compiled, ours vs native, forward and train step; with --config "
            "modernbert-base, ModernBERT-base's rows (ours only)"
        ),
        config="bert-base",
        dtypes=("float32",),
        sweeps=(
            Sweep(phases=("forward",), variants=_ALL_VARIANTS, modes=MODES),
            Sweep(phases=("train_step",), variants=OURS_VARIANTS, modes=("compiled",)),
            # an eager train step costs seconds on a CPU: two shapes are enough to compare
            Sweep(
                phases=("train_step",), variants=("ours-fused",), modes=("eager",), max_seq_len=512
            ),
            *_MODERNBERT_SWEEPS,
        ),
        seq_lens=_SWEEP_SEQ_LENS,
        tokens_per_batch=_SWEEP_TOKENS_PER_BATCH,
        max_batch=_MAX_BATCH,
        repeats=5,
        warmup=1,
        budget_s=10.0,
    ),
    "full": Suite(
        name="full",
        description="the standard suite in float32 and bfloat16, all three phases, plus batch sweeps",
        config="bert-base",
        dtypes=("float32", "bfloat16"),
        sweeps=(
            Sweep(phases=PHASES, variants=_ALL_VARIANTS, modes=MODES),
            Sweep(
                phases=("forward", "train_step"),
                variants=("ours-fused", "native"),
                modes=MODES,
                batches=(1, 2, 4, 8, 16, 32, 64),
            ),
        ),
        seq_lens=_SWEEP_SEQ_LENS,
        tokens_per_batch=_SWEEP_TOKENS_PER_BATCH,
        max_batch=_MAX_BATCH,
        repeats=7,
        warmup=2,
        budget_s=10.0,
    ),
    "peers": Suite(
        name="peers",
        description=(
            "BERT-base shapes (6 layers, tanh GELU), B=8 T=128 and B=2 T=512, compiled: ours "
            "(fused) against transformers' BertModel (sdpa) in PyTorch and keras-hub's "
            "BertBackbone on JAX, forward and AdamW train step; keras-hub on torch, forward; "
            "eager forward of ours, hf and hf-eager in PyTorch at T=128; parity against ours "
            "on every peer row"
        ),
        config="bert-base-tanh",
        dtypes=("float32",),
        sweeps=(
            Sweep(phases=("forward",), variants=("ours-fused", "hf", "keras"), modes=("compiled",)),
            Sweep(
                phases=("train_step",),
                variants=("ours-fused", "hf", "keras"),
                modes=("compiled",),
                frameworks=("jax",),
            ),
            # keras-hub's train step under torch.compile (B=8, T=128) had not finished after
            # ten minutes on the 2-core CPU under load, so PyTorch's compiled train step is
            # ours against transformers' only
            Sweep(
                phases=("train_step",),
                variants=("ours-fused", "hf"),
                modes=("compiled",),
                frameworks=("torch",),
            ),
            Sweep(
                phases=("forward",),
                variants=("ours-fused", "hf", "hf-eager"),
                modes=("eager",),
                max_seq_len=128,
                frameworks=("torch",),
            ),
        ),
        seq_lens={"cpu": (128, 512), "accelerator": (128, 512)},
        tokens_per_batch={"cpu": 1024, "accelerator": 8192},
        max_batch={"cpu": 8, "accelerator": 32},
        repeats=5,
        warmup=1,
        budget_s=10.0,
        warm_compile=False,
    ),
    "long-window": Suite(
        name="long-window",
        description=(
            "ModernBERT-base at B=1, T=2048, 4096 and 8192, flash attention, forward: with "
            "its sliding windows (this config) or every layer global (--config "
            "modernbert-base-global); PyTorch eager (its flash is a study path, eager under "
            "torch.compile too), JAX jitted"
        ),
        config="modernbert-base",
        dtypes=("float32",),
        sweeps=(
            *_LONG_WINDOW_SWEEPS,
            # without windows PyTorch's flash loops over every block pair: one forward of
            # three global layers at T=8192 did not finish in 8 minutes on the 2-core CPU
            *(
                dataclasses.replace(
                    s,
                    config="modernbert-base-global",
                    max_seq_len=4096 if s.frameworks == ("torch",) else None,
                )
                for s in _LONG_WINDOW_SWEEPS
            ),
        ),
        seq_lens={"cpu": (2048, 4096, 8192), "accelerator": (2048, 4096, 8192)},
        tokens_per_batch={"cpu": 1, "accelerator": 1},
        max_batch={"cpu": 1, "accelerator": 1},
        repeats=3,
        warmup=1,
        budget_s=30.0,
        warm_compile=False,
    ),
    "mesh": Suite(
        name="mesh",
        description=(
            "small config, one shape: the train step (ours, fused) on one device, and on "
            "each --mesh given (PyTorch eager over one process per device, JAX jitted)"
        ),
        config="small",
        dtypes=("float32",),
        sweeps=(
            Sweep(phases=("train_step",), variants=("ours-fused",), modes=("eager", "compiled")),
        ),
        seq_lens={"cpu": (128,), "accelerator": (512,)},
        tokens_per_batch={"cpu": 1024, "accelerator": 32768},
        max_batch={"cpu": 8, "accelerator": 64},
        repeats=5,
        warmup=2,
        budget_s=10.0,
        warm_compile=False,
    ),
}


# --- expansion into cases --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row to measure."""

    framework: str
    variant: str
    mode: str
    phase: str
    device: str
    dtype: str
    batch: int
    seq_len: int
    mesh: MeshSpec = dataclasses.field(default_factory=MeshSpec)  # one device unless given
    remat: str = "none"  # activation checkpointing (shared.backends.REMATS)

    @property
    def implementation(self) -> str:
        return variant_parts(self.variant)[0]

    @property
    def backend(self) -> str:
        return variant_parts(self.variant)[1]

    @property
    def pair_key(self) -> tuple[str, str, int, int, MeshSpec, str]:
        """Rows with the same key (one per framework) share one parity check."""
        return (self.variant, self.dtype, self.batch, self.seq_len, self.mesh, self.remat)

    def label(self) -> str:
        mesh = f" mesh {self.mesh.name}" if self.mesh.devices > 1 else ""
        remat = f" remat {self.remat}" if self.remat != "none" else ""
        return (
            f"{self.framework:5} {self.variant:10} {self.mode:8} {self.phase:16} "
            f"{self.dtype:8} B={self.batch:<3} T={self.seq_len}{mesh}{remat}"
        )


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the command line chose; ``None`` fields take the suite's values.

    Giving any of ``variants``, ``modes`` or ``phases`` replaces the suite's sweeps by one
    sweep, the cross product of the given values and the suite's values for the others.
    """

    frameworks: tuple[str, ...]
    device: str
    dtypes: tuple[str, ...] | None = None
    variants: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    phases: tuple[str, ...] | None = None
    batch: int | None = None
    seq_lens: tuple[int, ...] | None = None
    meshes: tuple[MeshSpec, ...] = ()  # each train-step case runs on each of these too
    remats: tuple[str, ...] = ("none",)  # each case with a backward of ours runs with each
    config: str | None = None  # the --config given (None: the suite's), picks pinned sweeps


def remat_applies(case: Case) -> bool:
    """Activation checkpointing (``--remat``) changes only rows with a backward, of our model:
    the others run once, without it."""
    return case.phase != "forward" and case.implementation == "ours"


def _union(values: Sequence[Sequence[str]], order: Sequence[str]) -> tuple[str, ...]:
    present = {v for vs in values for v in vs}
    return tuple(v for v in order if v in present)


def suite_sweeps(suite: Suite, config: str | None = None) -> tuple[Sweep, ...]:
    """The sweeps of ``suite`` that run with ``--config config`` (None: the suite's own):
    those pinned to that config if it has any, else its unpinned ones."""
    name = config or suite.config
    pinned = tuple(s for s in suite.sweeps if s.config == name)
    return pinned or tuple(s for s in suite.sweeps if s.config is None)


def _sweeps(suite: Suite, sel: Selection) -> tuple[Sweep, ...]:
    sweeps = suite_sweeps(suite, sel.config)
    if sel.variants is None and sel.modes is None and sel.phases is None:
        return sweeps
    return (
        Sweep(
            phases=sel.phases or _union([s.phases for s in sweeps], PHASES),
            variants=sel.variants or _union([s.variants for s in sweeps], VARIANTS),
            modes=sel.modes or _union([s.modes for s in sweeps], MODES),
        ),
    )


def expand(suite: Suite, sel: Selection) -> list[Case]:
    """Every case of ``suite`` under the command line's ``sel``, without duplicates.

    Ordered so that the rows of one parity pair (same variant, dtype and shape) are
    adjacent, torch before jax.
    """
    kind = "cpu" if sel.device == "cpu" else "accelerator"
    seq_lens = sel.seq_lens or suite.seq_lens[kind]
    dtypes = sel.dtypes or suite.dtypes

    def batch(seq_len: int) -> int:
        if sel.batch is not None:
            return sel.batch
        return batch_for(
            seq_len, tokens_per_batch=suite.tokens_per_batch[kind], max_batch=suite.max_batch[kind]
        )

    cases: dict[Case, None] = {}  # an ordered set
    for dtype in dtypes:
        for sweep in _sweeps(suite, sel):
            if sweep.batches is not None and sel.batch is None:
                shapes = [(b, seq_lens[0]) for b in sweep.batches]
            else:
                limit = sweep.max_seq_len if kind == "cpu" else None
                shapes = [(batch(t), t) for t in seq_lens if limit is None or t <= limit]
            for b, t in shapes:
                for variant in sweep.variants:
                    for phase in sweep.phases:
                        for mode in sweep.modes:
                            for framework in sel.frameworks:
                                if framework not in lookup_variant(variant).frameworks:
                                    continue  # no such model (transformers' BERT on JAX)
                                if sweep.frameworks and framework not in sweep.frameworks:
                                    continue
                                case = Case(
                                    framework, variant, mode, phase, sel.device, dtype, b, t
                                )
                                remats = sel.remats if remat_applies(case) else ("none",)
                                for remat in remats:
                                    case = dataclasses.replace(case, remat=remat)
                                    cases[case] = None
                                    if phase != "train_step":
                                        continue
                                    for mesh in sel.meshes:
                                        cases[dataclasses.replace(case, mesh=mesh)] = None
    return sorted(cases, key=_execution_order)


def _execution_order(case: Case) -> tuple:
    return (
        DTYPES.index(case.dtype) if case.dtype in DTYPES else len(DTYPES),
        case.seq_len,
        case.batch,
        case.mesh.devices,
        case.mesh.name,
        VARIANTS.index(case.variant),
        REMATS.index(case.remat),
        FRAMEWORKS.index(case.framework),
        PHASES.index(case.phase),
        MODES.index(case.mode),
    )


def max_len_for(cfg: EncoderConfig, cases: Sequence[Case]) -> EncoderConfig:
    """``cfg`` with ``max_len`` raised to the longest sequence among ``cases``."""
    longest = max((c.seq_len for c in cases), default=cfg.max_len)
    return cfg if longest <= cfg.max_len else cfg.replace(max_len=longest)
