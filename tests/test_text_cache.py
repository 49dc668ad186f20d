"""The embedding-table cache: reuse, rebuild on any input change, checksums, input validation.

A spy encoder (deterministic, counts its calls) stands in for the models here; the real encoders are
tested in test_text_minilm.py and test_text_clip.py.
"""

import json
import logging
import os

import numpy as np
import pytest

from ppt_jax import text
from ppt_jax.text import cache, table

NAMES = ("wall", "floor", "chair")


class SpyEncoder:
    """Deterministic raw (un-normalised) embeddings of each text; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, model_path=None, bpe_path=None, work_dir=None):
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=8) * 3.0 for t in texts])


@pytest.fixture
def spy(monkeypatch):
    spy = SpyEncoder()
    for name, enc in list(table.ENCODERS.items()):
        monkeypatch.setitem(table.ENCODERS, name, enc._replace(encode=spy))
    return spy


def test_table_is_unit_rows_of_the_templated_names(spy, tmp_path):
    emb = text.class_embeddings("minilm", NAMES, "a [x] in a room", cache_dir=str(tmp_path))
    assert emb.dtype == np.float32 and emb.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    assert spy.calls == [["a wall in a room", "a floor in a room", "a chair in a room"]]
    raw = spy(["a floor in a room"])[0]
    np.testing.assert_allclose(emb[1], raw / np.linalg.norm(raw), rtol=1e-6)


def test_reused_then_rebuilt_when_any_input_changes(spy, tmp_path):
    d = str(tmp_path)
    first = text.class_embeddings("minilm", NAMES, cache_dir=d)
    np.testing.assert_array_equal(text.class_embeddings("minilm", NAMES, cache_dir=d), first)
    assert len(spy.calls) == 1
    text.class_embeddings("minilm", NAMES, "a point of [x]", cache_dir=d)   # template
    assert len(spy.calls) == 2
    text.class_embeddings("minilm", NAMES[:2], cache_dir=d)                 # class list
    assert len(spy.calls) == 3
    text.class_embeddings("minilm", NAMES[::-1], cache_dir=d)               # class order
    assert len(spy.calls) == 4
    text.class_embeddings("random_clip", NAMES, cache_dir=d)                # encoder
    assert len(spy.calls) == 5
    text.class_embeddings("minilm", NAMES, cache_dir=d, model_path=d)        # model
    assert len(spy.calls) == 6
    # Switching back finds the earlier tables: no new encoder calls.
    text.class_embeddings("minilm", NAMES, "a point of [x]", cache_dir=d)
    text.class_embeddings("minilm", NAMES, cache_dir=d)
    assert len(spy.calls) == 6
    assert len(os.listdir(os.path.join(d, cache.SUBDIR))) == 2 * 6


def test_metadata_records_inputs_and_checksum(spy, tmp_path):
    emb = text.class_embeddings("random_clip", NAMES, "[x]", cache_dir=str(tmp_path))
    spec = table.table_spec("random_clip", NAMES, "[x]", None)
    npy, meta_path = cache.paths(str(tmp_path), spec)
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["encoder"] == "random_clip" and meta["label"] == "random_clip (random, not CLIP)"
    assert meta["template"] == "[x]" and meta["names"] == list(NAMES) and meta["shape"] == [3, 8]
    assert "not CLIP" in meta["model"]
    import hashlib

    assert meta["sha256"] == hashlib.sha256(np.load(npy).tobytes()).hexdigest()
    np.testing.assert_array_equal(np.load(npy), emb)


def test_corrupted_table_is_an_error_naming_the_file(spy, tmp_path):
    text.class_embeddings("minilm", NAMES, cache_dir=str(tmp_path))
    npy, _ = cache.paths(str(tmp_path), table.table_spec("minilm", NAMES, "[x]", None))
    tampered = np.load(npy)
    tampered[0, 0] += 1e-3
    np.save(npy, tampered)
    with pytest.raises(ValueError, match=r"minilm_.*\.npy does not match the checksum"):
        text.class_embeddings("minilm", NAMES, cache_dir=str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(encoder="bert"), "unknown text encoder 'bert'"),
    (dict(template="a photo of"), "must be a string containing '\\[x\\]'"),
    (dict(names=("wall", "wall")), "duplicates: \\['wall'\\]"),
    (dict(names=()), "non-empty list"),
    (dict(names=("wall", "")), "non-empty strings"),
    (dict(cache_dir=None), "cache_dir must be a directory path"),
])
def test_bad_arguments_are_rejected(spy, tmp_path, kwargs, message):
    args = dict(encoder="minilm", names=NAMES, template="[x]", cache_dir=str(tmp_path)) | kwargs
    with pytest.raises(ValueError, match=message):
        text.class_embeddings(**args)
    assert spy.calls == []


def test_random_encoder_is_labelled_in_every_log_line(spy, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ppt_jax.text"):
        text.class_embeddings("random_clip", NAMES, cache_dir=str(tmp_path))
        text.class_embeddings("random_clip", NAMES, cache_dir=str(tmp_path))
    lines = [r.getMessage() for r in caplog.records if "random_clip" in r.getMessage()]
    assert len(lines) == 2 and all("random, not CLIP" in line for line in lines)


def test_zero_embedding_is_rejected(monkeypatch, tmp_path):
    zero = table.ENCODERS["minilm"]._replace(encode=lambda texts, **_: np.zeros((len(texts), 4)))
    monkeypatch.setitem(table.ENCODERS, "minilm", zero)
    with pytest.raises(ValueError, match="'minilm' returned a non-finite or zero embedding"):
        text.class_embeddings("minilm", NAMES, cache_dir=str(tmp_path))


def test_cli_writes_the_union_table_and_summarises_it(spy, tmp_path, capsys):
    from ppt_jax import labels
    from ppt_jax.text import __main__ as cli

    cli.main(["--encoder", "minilm", "--out", str(tmp_path), "--template", "a [x]"])
    out = capsys.readouterr().out
    spec = table.table_spec("minilm", labels.UNION_NAMES, "a [x]", None)
    npy = cache.paths(str(tmp_path), spec)[0]
    assert f"table (36, 8) float32 -> {npy}" in out and os.path.isfile(npy)
    assert spy.calls == [[f"a {n}" for n in labels.UNION_NAMES]]
    emb = np.load(npy).astype(np.float64)
    cos = emb @ emb.T
    np.fill_diagonal(cos, -np.inf)
    i = labels.UNION_NAMES.index("sofa")
    assert f"{'sofa':>16s} -> {labels.UNION_NAMES[int(cos[i].argmax())]:<16s}" in out
    assert "cos(bookshelf,bookcase)" in out and "cos(sofa,chair)" in out


def test_cli_rejects_an_unknown_encoder_or_template(spy, tmp_path, capsys):
    from ppt_jax.text import __main__ as cli

    with pytest.raises(SystemExit):
        cli.main(["--encoder", "word2vec", "--out", str(tmp_path)])
    assert "invalid choice: 'word2vec'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"error: text template must be a string containing '\[x\]'"):
        cli.main(["--encoder", "minilm", "--out", str(tmp_path), "--template", "a photo"])
    assert spy.calls == []


def test_cache_on_object_storage(spy, ram_dir):
    """The cache reads and writes through etils.epath: a gs://-like location works as a local one."""
    from etils import epath

    emb = text.class_embeddings("minilm", NAMES, cache_dir=ram_dir)
    again = text.class_embeddings("minilm", NAMES, cache_dir=ram_dir)
    assert len(spy.calls) == 1
    np.testing.assert_array_equal(again, emb)
    names = sorted(p.name for p in (epath.Path(ram_dir) / cache.SUBDIR).iterdir())
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".npy")
