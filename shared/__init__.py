"""Framework-neutral core (NumPy only; never imports torch or jax).

``config`` (EncoderConfig), ``masks`` (the one mask convention), ``positional`` (sinusoidal
table), ``weights`` (checkpoint format v1), ``reference`` (float64 oracle), ``inputs`` (call
argument validation), ``tolerances`` (the one tolerance table).
"""

from shared.config import EncoderConfig

__all__ = ["EncoderConfig"]
