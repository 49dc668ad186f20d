"""`class_embeddings`: class names -> cached, L2-normalised text-embedding table (design.md §5)."""

import logging
import os
import tempfile
from collections import namedtuple

import numpy as np

from ppt_jax.text import cache, clip, minilm, sources

Encoder = namedtuple("Encoder", "encode default_model label")

ENCODERS = {
    "clip": Encoder(clip.encode_clip, lambda: clip.DEFAULT_MODEL, "CLIP text encoder"),
    "minilm": Encoder(minilm.encode_minilm, minilm.default_model_id, "sentence encoder (MiniLM / BERT-like)"),
    "random_clip": Encoder(clip.encode_random_clip, lambda: clip.RANDOM_MODEL, clip.RANDOM_LABEL),
}

log = logging.getLogger(__name__)


def class_embeddings(encoder, names, template="[x]", *, cache_dir, model_path=None, bpe_path=None):
    """(len(names), D) float32 table of unit rows: `template` with "[x]" -> each name, through `encoder`.

    Built once per (encoder, model, template, names) and cached in `cache_dir`; later calls load the
    cached table without importing any model. `bpe_path` (clip only) is CLIP's
    bpe_simple_vocab_16e6.txt.gz, used when the model directory has no tokenizer files.
    """
    if not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir):
        raise ValueError(f"cache_dir must be a directory path (the work directory), got {cache_dir!r}")
    spec = table_spec(encoder, names, template, model_path)
    label = ENCODERS[encoder].label
    table = cache.load(cache_dir, spec)
    if table is not None:
        log.info("%s: loaded %s table %s from %s", label, encoder, table.shape, cache.paths(cache_dir, spec)[0])
        return table
    texts = [template.replace("[x]", name) for name in spec["names"]]
    # Tokenizer files built from bpe_path must be local files (Hugging Face reads them by path).
    work_dir = str(cache_dir) if "://" not in str(cache_dir) else tempfile.mkdtemp(prefix="ppt_text_")
    raw = ENCODERS[encoder].encode(texts, model_path=model_path, bpe_path=bpe_path, work_dir=work_dir)
    table = normalize_rows(raw, encoder, len(texts))
    extra = {"label": label, "dim": int(table.shape[1]), "bpe_path": bpe_path}
    meta_path = cache.save(cache_dir, spec, table, extra)
    log.info("%s: built %s table %s, cached at %s", label, encoder, table.shape, meta_path)
    return table


def check_available(encoder, model_path=None, local_only=False):
    """Raise `EncoderUnavailable` (naming what was looked for) unless `encoder`'s config and weights exist.

    Loads no model. `local_only`: look for a hub id in the local hub cache only (no network).
    """
    _check_encoder(encoder)
    if encoder == "random_clip":
        return
    model_path = model_path or (clip.DEFAULT_MODEL if encoder == "clip" else minilm.default_model_dir())
    what = ENCODERS[encoder].label
    if sources.locate(model_path, "config.json", what, local_only) is None or not any(
            sources.locate(model_path, n, what, local_only) for n in sources.WEIGHT_FILES):
        raise sources.EncoderUnavailable(sources.missing_files_message(model_path, what))


def table_spec(encoder, names, template, model_path):
    """Everything that determines the table, validated; its hash is the cache key."""
    _check_encoder(encoder)
    if not isinstance(template, str) or "[x]" not in template:
        raise ValueError(f"text template must be a string containing '[x]', got {template!r}")
    names = list(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"class names must be a non-empty list of non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names contain duplicates: {sorted({n for n in names if names.count(n) > 1})}")
    if model_path is None:
        model = ENCODERS[encoder].default_model()
    else:
        expanded = os.path.expanduser(model_path)
        model = os.path.abspath(expanded) if os.path.isdir(expanded) else model_path
    return {"format": cache.FORMAT, "encoder": encoder, "model": model, "template": template, "names": names}


def normalize_rows(raw, encoder, num_names):
    raw = np.asarray(raw, np.float64)
    if raw.ndim != 2 or raw.shape[0] != num_names:
        raise ValueError(f"text encoder {encoder!r} returned shape {raw.shape}, not ({num_names}, dim)")
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    if not np.all(np.isfinite(raw)) or np.any(norms == 0):
        raise ValueError(f"text encoder {encoder!r} returned a non-finite or zero embedding")
    return (raw / norms).astype(np.float32)


def _check_encoder(encoder):
    if encoder not in ENCODERS:
        raise ValueError(f"unknown text encoder {encoder!r}; choose one of {sorted(ENCODERS)}")
