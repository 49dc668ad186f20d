"""Class-name text-embedding tables for the language-guided head (design.md §5).

Importing this package loads no model: transformers is imported only when a table must be built.
"""

from ppt_jax.text.bpe import clip_tokenizer_from_bpe
from ppt_jax.text.sources import EncoderUnavailable
from ppt_jax.text.table import ENCODERS, check_available, class_embeddings

__all__ = ["ENCODERS", "EncoderUnavailable", "check_available", "class_embeddings", "clip_tokenizer_from_bpe"]
