"""On-disk cache of embedding tables: `<encoder>_<key>.npy` + `.json` in `<cache_dir>/text_embeddings/`.

The key hashes everything that determines the table (encoder, model, template, class list), so a change
of any of them builds a new table and switching back reuses the old one. The JSON records those inputs
and a sha256 of the table, checked on every load: training reads the table with no encoder in memory.
"""

import hashlib
import io
import json

import numpy as np
from etils import epath

from ppt_jax import files

FORMAT = 1
SUBDIR = "text_embeddings"


def spec_key(spec):
    """Short stable hash of the table's inputs (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def table_sha256(table):
    return hashlib.sha256(np.ascontiguousarray(table, np.float32).tobytes()).hexdigest()


def paths(cache_dir, spec):
    """(table .npy, metadata .json) as epath.Paths (`cache_dir` may be local or gs://...)."""
    stem = epath.Path(cache_dir) / SUBDIR / f"{spec['encoder']}_{spec_key(spec)}"
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def load(cache_dir, spec):
    """The cached table for `spec`, or None if there is none; a corrupt or mismatched entry is an error."""
    npy, meta_path = paths(cache_dir, spec)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        table = np.load(io.BytesIO(npy.read_bytes()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"embedding cache {meta_path} / {npy} is unreadable ({e}); delete both to rebuild") from e
    stored = {k: meta.get(k) for k in spec}
    if stored != spec:
        raise ValueError(f"embedding cache {meta_path} records {stored}, not the requested {spec}; delete it")
    if meta.get("sha256") != table_sha256(table) or list(table.shape) != meta.get("shape"):
        raise ValueError(f"embedding cache {npy} does not match the checksum/shape in {meta_path}; delete both")
    return table


def save(cache_dir, spec, table, extra):
    """Write the table, then its metadata (the JSON's presence marks a complete entry); returns the JSON path."""
    npy, meta_path = paths(cache_dir, spec)
    npy.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    files.write_bytes(npy, buffer.getvalue())
    meta = dict(spec, **extra, shape=list(table.shape), sha256=table_sha256(table))
    files.write_text(meta_path, json.dumps(meta, indent=1))
    return meta_path
