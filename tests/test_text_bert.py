"""The minilm encoder on any BERT-like directory: attention-mask mean of the last hidden state."""

import os

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"

from ppt_jax import text  # noqa: E402
from ppt_jax.text.clip import random_params  # noqa: E402

WORDS = ["wall", "floor", "book", "##shelf", "case", "shower", "curtain"]
NAMES = ("wall", "bookshelf", "shower curtain", "bookcase floor")


def test_bert_directory_gives_mean_pooled_unit_rows(tmp_path):
    import jax
    from transformers import BertConfig, BertTokenizer, FlaxBertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32)
    model = FlaxBertModel(config, _do_init=False)  # with a pooler, which the encoder does not load
    params = random_params(model.params_shape_tree, seed=5)
    model.save_pretrained(str(tmp_path), params=params)

    emb = text.class_embeddings("minilm", NAMES, cache_dir=str(tmp_path / "cache"), model_path=str(tmp_path))

    # Reference: the pure-Python tokenizer, padding to a fixed longer length, masked mean in float64.
    enc = BertTokenizer(str(tmp_path / "vocab.txt"))(list(NAMES), padding="max_length", max_length=12,
                                                     return_tensors="np")
    hidden = jax.jit(lambda p, i, m: model(i, m, params=p).last_hidden_state)(
        params, enc["input_ids"], enc["attention_mask"])
    mask = enc["attention_mask"][..., None]
    ref = (np.asarray(hidden, np.float64) * mask).sum(axis=1) / mask.sum(axis=1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert emb.shape == (4, 16)
    np.testing.assert_allclose(emb, ref, atol=2e-5)
