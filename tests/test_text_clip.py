"""The clip encoder end to end on tiny random CLIP checkpoints written by the test.

Reference: `FlaxCLIPModel.get_text_features` of the full (text + vision) checkpoint, tokenised by the
slow (pure-Python) CLIP tokenizer; the encoder must load only the text tower and projection from it.
"""

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from ppt_jax import text  # noqa: E402
from ppt_jax.text import bpe  # noqa: E402
from ppt_jax.text.clip import random_params  # noqa: E402
from conftest import CLIP_BPE  # noqa: E402

NAMES = ("chair", "table", "wall", "cat")
MERGES = [("c", "h"), ("a", "i"), ("ch", "ai"), ("t", "a"), ("b", "l"), ("bl", "e</w>"), ("w", "a"), ("l", "l</w>")]


def tiny_clip_config(vocab, legacy_ids=False):
    """`legacy_ids`: the special-token ids of openai/clip-vit-base-patch16's config (eos_token_id 2 makes
    the model pool at the largest token id, which is CLIP's EOT)."""
    from transformers import CLIPConfig

    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1) if legacy_ids else dict(
        bos_token_id=vocab[bpe.BOS_TOKEN], eos_token_id=vocab[bpe.EOS_TOKEN], pad_token_id=vocab[bpe.EOS_TOKEN])
    return CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=16),
        projection_dim=24,
    )


def save_full_clip(model_dir, merges, with_tokenizer, legacy_ids=False):
    """A random full FlaxCLIPModel (as openai/clip-vit-base-patch16 is stored); returns (model, params)."""
    from transformers import FlaxCLIPModel

    model = FlaxCLIPModel(tiny_clip_config(bpe.bpe_vocab(merges), legacy_ids), _do_init=False)
    params = random_params(model.params_shape_tree, seed=3)
    params["logit_scale"] = np.asarray(np.log(100.0), np.float32)
    model.save_pretrained(model_dir, params=params)
    if with_tokenizer:
        bpe.write_bpe_files(merges, model_dir)
    return model, params


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("tiny_clip"))
    model, params = save_full_clip(model_dir, MERGES, with_tokenizer=True)
    return model_dir, model, params


def reference_features(model, params, vocab_dir, names):
    import jax
    from transformers import CLIPTokenizer

    slow = CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt"))
    enc = slow(list(names), padding="max_length", max_length=77, return_tensors="np")
    feats = jax.jit(lambda p, i, m: model.get_text_features(i, m, params=p))(
        params, enc["input_ids"], enc["attention_mask"])
    feats = np.asarray(feats, np.float64)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def test_text_features_of_a_full_clip_checkpoint(tiny_clip, tmp_path):
    model_dir, model, params = tiny_clip
    emb = text.class_embeddings("clip", NAMES, "a [x]", cache_dir=str(tmp_path), model_path=model_dir)
    assert emb.shape == (len(NAMES), 24) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    ref = reference_features(model, params, model_dir, [f"a {n}" for n in NAMES])
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_weights_without_tokenizer_files_use_the_bpe_file(tmp_path):
    merges = bpe.read_clip_merges(CLIP_BPE)
    model_dir = str(tmp_path / "clip_no_tokenizer")
    model, params = save_full_clip(model_dir, merges, with_tokenizer=False, legacy_ids=True)
    with pytest.raises(text.EncoderUnavailable, match=r"no CLIP tokenizer: looked for .*tokenizer\.json.*bpe_path"):
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path=model_dir)
    emb = text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path=model_dir, bpe_path=CLIP_BPE)
    vocab_dir = str(tmp_path / "clip_bpe_tokenizer")
    np.testing.assert_allclose(emb, reference_features(model, params, vocab_dir, NAMES), atol=1e-5)


def test_checkpoint_without_projection_is_refused(tmp_path):
    from transformers import FlaxCLIPTextModel

    vocab = bpe.bpe_vocab(MERGES)
    tower = FlaxCLIPTextModel(tiny_clip_config(vocab).text_config, _do_init=False)
    tower.save_pretrained(str(tmp_path), params=random_params(tower.params_shape_tree, seed=0))
    bpe.write_bpe_files(MERGES, str(tmp_path))
    with pytest.raises(text.EncoderUnavailable, match=r"flax_model\.msgpack lacks weights .*text_projection"):
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path=str(tmp_path))


def test_availability_check_loads_nothing(tiny_clip, tmp_path):
    text.check_available("clip", tiny_clip[0])
    text.check_available("random_clip")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(text.EncoderUnavailable, match=r"looked for .*config\.json and one of .*flax_model\.msgpack"):
        text.check_available("clip", str(tmp_path))
    with pytest.raises(text.EncoderUnavailable, match=str(tmp_path / "flax_model.msgpack")):
        text.check_available("clip", str(tmp_path), local_only=True)


def test_config_pooling_at_a_non_eot_token_is_refused(tmp_path):
    from transformers import CLIPConfig

    save_full_clip(str(tmp_path), MERGES, with_tokenizer=True)
    config = CLIPConfig.from_pretrained(str(tmp_path))
    config.text_config.eos_token_id = bpe.bpe_vocab(MERGES)[bpe.BOS_TOKEN]
    config.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="eos_token_id=.* does not match the tokenizer's EOT id"):
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path=str(tmp_path))


def test_missing_weights_name_the_paths(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(text.EncoderUnavailable) as err:
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path=str(empty))
    for name in ("config.json", "flax_model.msgpack", "model.safetensors"):
        assert str(empty / name) in str(err.value)
    with pytest.raises(text.EncoderUnavailable, match="model directory /no/such/clip does not exist"):
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path="/no/such/clip")


def test_offline_hub_id_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(text.EncoderUnavailable):
        text.check_available("clip", "ppt-jax-tests/no-such-clip", local_only=True)
    with pytest.raises(text.EncoderUnavailable, match=r"'ppt-jax-tests/no-such-clip' is not a local directory.*"
                                                      r"HF_HUB_OFFLINE is set.*config\.json"):
        text.class_embeddings("clip", NAMES, cache_dir=str(tmp_path), model_path="ppt-jax-tests/no-such-clip")
    with pytest.raises(text.EncoderUnavailable, match="ppt-jax-tests/no-such-minilm"):
        text.class_embeddings("minilm", NAMES, cache_dir=str(tmp_path), model_path="ppt-jax-tests/no-such-minilm")


def test_random_clip_is_seeded_and_unit_norm(tmp_path):
    a = text.class_embeddings("random_clip", NAMES, cache_dir=str(tmp_path / "a"))
    b = text.class_embeddings("random_clip", NAMES, cache_dir=str(tmp_path / "b"))
    assert a.shape == (len(NAMES), 512)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="takes no model_path"):
        text.class_embeddings("random_clip", NAMES, cache_dir=str(tmp_path), model_path=str(tmp_path))
