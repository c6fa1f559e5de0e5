"""Framework-neutral core (NumPy only; never imports torch or jax).

``config`` (EncoderConfig), ``masks`` (the one mask convention), ``positional`` (sinusoidal
table), ``weights`` (checkpoint formats 1 and 2), ``layouts`` (the one vocabulary of weight
layouts), ``reference`` (float64 oracle), ``inputs`` (call argument validation),
``tolerances`` (the one tolerance table), ``hf`` (Hugging Face folders of BERT, RoBERTa,
DistilBERT, ELECTRA, GPT-2 and ViT, in and out), ``flops`` (analytic FLOP counts), ``data`` (synthetic tasks, identical
batches for both frameworks), ``training`` (the training rules both frameworks share),
``divergence`` (layer-by-layer comparison of two runs), ``backends`` (the attention backend
names), ``atomic`` (the one way files are written: atomically, with the umask's mode),
``cli`` (one-line usage errors shared by every command line).
"""

from shared.backends import BACKENDS
from shared.config import EncoderConfig

__all__ = ["BACKENDS", "EncoderConfig"]
