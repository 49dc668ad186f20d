"""CLIP tokenizer rebuilt from bpe_simple_vocab_16e6.txt.gz gives CLIP's own token ids."""

import gzip
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from ppt_jax import labels  # noqa: E402
from ppt_jax.text import bpe  # noqa: E402
from conftest import CLIP_BPE  # noqa: E402


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def clip_tokenizer(bpe_dir):
    return bpe.clip_tokenizer_from_bpe(CLIP_BPE, bpe_dir)


def test_real_vocabulary_gives_clip_ids(clip_tokenizer):
    # The ids openai/CLIP's clip.tokenize gives (tests/data/README.md); 49406/49407 = start/end of text.
    assert clip_tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer("a diagram")["input_ids"] == [49406, 320, 22697, 49407]
    assert len(clip_tokenizer) == 49408


def test_fast_and_slow_tokenizers_agree_on_union_names(clip_tokenizer, bpe_dir):
    # The slow tokenizer is transformers' pure-Python BPE, the fast one the Rust library.
    from transformers import CLIPTokenizer

    slow = CLIPTokenizer(os.path.join(bpe_dir, "vocab.json"), os.path.join(bpe_dir, "merges.txt"))
    for name in labels.UNION_NAMES:
        assert clip_tokenizer(name)["input_ids"] == slow(name)["input_ids"], name


def test_synthetic_merges_tokenize_as_bpe(tmp_path):
    merges = [("c", "a"), ("ca", "t</w>")]
    tok = bpe.load_tokenizer(bpe.write_bpe_files(merges, str(tmp_path)))
    vocab = bpe.bpe_vocab(merges)
    assert len(vocab) == 256 * 2 + 2 + 2
    assert tok("cat")["input_ids"] == [vocab[bpe.BOS_TOKEN], vocab["cat</w>"], vocab[bpe.EOS_TOKEN]]
    assert tok("ta")["input_ids"] == [vocab[bpe.BOS_TOKEN], vocab["t"], vocab["a</w>"], vocab[bpe.EOS_TOKEN]]


def test_missing_or_malformed_vocabulary_file_is_named(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="nowhere.txt.gz"):
        bpe.read_clip_merges(str(tmp_path / "nowhere.txt.gz"))
    not_gz = tmp_path / "plain.txt.gz"
    not_gz.write_text("#version\na b\n")
    with pytest.raises(ValueError, match="plain.txt.gz"):
        bpe.read_clip_merges(str(not_gz))
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(ValueError, match="short.txt.gz.*48894"):
        bpe.read_clip_merges(str(short))
    assert "short.txt.gz is not CLIP's bpe_simple_vocab_16e6.txt.gz" in caplog.text
