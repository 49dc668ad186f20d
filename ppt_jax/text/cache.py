"""On-disk cache of embedding tables: `<encoder>_<key>.npy` + `.json` in `<cache_dir>/text_embeddings/`.

The key hashes everything that determines the table (encoder, model, template, class list), so a change
of any of them builds a new table and switching back reuses the old one. The JSON records those inputs
and a sha256 of the table, checked on every load: training reads the table with no encoder in memory.
"""

import hashlib
import json
import os

import numpy as np

FORMAT = 1
SUBDIR = "text_embeddings"


def spec_key(spec):
    """Short stable hash of the table's inputs (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def table_sha256(table):
    return hashlib.sha256(np.ascontiguousarray(table, np.float32).tobytes()).hexdigest()


def paths(cache_dir, spec):
    stem = os.path.join(cache_dir, SUBDIR, f"{spec['encoder']}_{spec_key(spec)}")
    return stem + ".npy", stem + ".json"


def load(cache_dir, spec):
    """The cached table for `spec`, or None if there is none; a corrupt or mismatched entry is an error."""
    npy, meta_path = paths(cache_dir, spec)
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        table = np.load(npy, allow_pickle=False)
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
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    tmp = f"{npy}.tmp{os.getpid()}.npy"
    np.save(tmp, table, allow_pickle=False)
    os.replace(tmp, npy)
    meta = dict(spec, **extra, shape=list(table.shape), sha256=table_sha256(table))
    tmp = f"{meta_path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path)
    return meta_path
