"""CLIP's BPE tokenizer rebuilt from OpenAI's vocabulary file.

OpenAI's `clip` package and `open-clip-torch` ship only `bpe_simple_vocab_16e6.txt.gz`; Hugging Face
tokenizers read `vocab.json` + `merges.txt`. Deriving the latter from the former (as openai/CLIP's
`SimpleTokenizer.__init__` does) lets someone who holds only that file and the weights get CLIP's real
token ids.
"""

import gzip
import hashlib
import json
import logging
import os

from ppt_jax import files

# openai/CLIP reads lines[1 : 49152 - 256 - 2 + 1]: 48,894 merges after the header line.
NUM_CLIP_MERGES = 49152 - 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77
# sha256 of the file openai/CLIP and open-clip-torch ship (docs/reference.md §12).
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

log = logging.getLogger(__name__)


def read_clip_merges(gz_path):
    """The merge pairs CLIP uses, in rank order, from `bpe_simple_vocab_16e6.txt.gz`."""
    if not os.path.isfile(gz_path):
        raise FileNotFoundError(f"CLIP BPE vocabulary not found: {gz_path} (expected bpe_simple_vocab_16e6.txt.gz)")
    with open(gz_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != CLIP_BPE_SHA256:
        log.warning("%s is not CLIP's bpe_simple_vocab_16e6.txt.gz (sha256 %s); its token ids are not CLIP's",
                    gz_path, digest)
    try:
        with gzip.open(gz_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{gz_path}: not a gzip-compressed UTF-8 text file ({e})") from e
    body = lines[1 : NUM_CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in body]
    if len(merges) != NUM_CLIP_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{gz_path}: expected a header line and {NUM_CLIP_MERGES} merge lines of two tokens each "
            "(the layout of CLIP's bpe_simple_vocab_16e6.txt.gz)"
        )
    return merges


def bpe_vocab(merges):
    """Token -> id in CLIP's order: 256 byte chars, their `</w>` forms, one token per merge, BOS, EOS."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("BPE merges produce duplicate tokens; the merge list is not a valid CLIP BPE list")
    return vocab


def write_bpe_files(merges, out_dir):
    """Write Hugging Face `vocab.json` + `merges.txt` for `merges` into `out_dir`; returns `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    vocab = bpe_vocab(merges)
    files.write_text(os.path.join(out_dir, "vocab.json"), json.dumps(vocab, ensure_ascii=False))
    files.write_text(
        os.path.join(out_dir, "merges.txt"), "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    )
    return out_dir


def load_tokenizer(tokenizer_dir):
    """A `CLIPTokenizerFast` from `vocab.json` + `merges.txt` with CLIP's special tokens and context length."""
    from transformers import CLIPTokenizerFast

    files = [os.path.join(tokenizer_dir, n) for n in ("vocab.json", "merges.txt")]
    missing = [p for p in files if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"CLIP tokenizer files missing: {', '.join(missing)}")
    return CLIPTokenizerFast(
        vocab_file=files[0],
        merges_file=files[1],
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=CONTEXT_LENGTH,
    )


def clip_tokenizer_from_bpe(gz_path, out_dir):
    """CLIP's real tokenizer from `bpe_simple_vocab_16e6.txt.gz` (derived files are written to `out_dir`)."""
    return load_tokenizer(write_bpe_files(read_clip_merges(gz_path), out_dir))
