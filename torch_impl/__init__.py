"""The Transformer encoder in PyTorch (mirrors ``jax_impl``).

The same adapter names in both frameworks (``jax_impl`` has them too): ``DTYPES`` (the
project's dtype names to this framework's), ``to_numpy``, ``export_weights``, ``save``,
``import_weights``, ``from_weights``, ``load``; each works on a sharded model as well.
``shared.frameworks.IMPLS`` maps "torch" and "jax" to the two packages.
"""

from torch_impl.attention import (
    BACKENDS,
    MultiHeadAttention,
    flash_attention,
    fused_attention,
    make_attention_mask,
    scaled_dot_product_attention,
)
from torch_impl.encoder import (
    Embeddings,
    Encoder,
    EncoderLayer,
    FeedForward,
    PatchEmbeddings,
    TokenEmbeddings,
    TransformerEncoder,
)
from torch_impl.weights import (
    DTYPES,
    export_weights,
    from_weights,
    import_weights,
    load,
    parameter_table,
    rows,
    save,
    to_numpy,
)

__all__ = [
    "BACKENDS",
    "DTYPES",
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "PatchEmbeddings",
    "TokenEmbeddings",
    "TransformerEncoder",
    "export_weights",
    "flash_attention",
    "from_weights",
    "fused_attention",
    "import_weights",
    "load",
    "make_attention_mask",
    "parameter_table",
    "rows",
    "save",
    "scaled_dot_product_attention",
    "to_numpy",
]
