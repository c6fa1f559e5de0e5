"""The Transformer encoder in PyTorch (mirrors ``jax_impl``)."""

from torch_impl.attention import (
    BACKENDS,
    MultiHeadAttention,
    flash_attention,
    fused_attention,
    make_attention_mask,
    scaled_dot_product_attention,
)
from torch_impl.encoder import Embeddings, Encoder, EncoderLayer, FeedForward, TransformerEncoder
from torch_impl.weights import (
    export_weights,
    from_weights,
    import_weights,
    load,
    parameter_table,
    save,
)

__all__ = [
    "BACKENDS",
    "Embeddings",
    "Encoder",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "TransformerEncoder",
    "export_weights",
    "flash_attention",
    "from_weights",
    "fused_attention",
    "import_weights",
    "load",
    "make_attention_mask",
    "parameter_table",
    "save",
    "scaled_dot_product_attention",
]
