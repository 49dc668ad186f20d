"""Shared fixtures."""

import uuid

import pytest


@pytest.fixture
def ram_dir():
    """A fresh `ram://` directory: TensorFlow's in-memory file system, reached through etils.epath
    as gs:// is (epath's gs backend is tf.io.gfile when TensorFlow is installed). It stands in for
    object storage: a path there that leaked into `os`/`open` would fail or land on local disk."""
    from etils.epath import backend, gpath, register

    if "ram" not in gpath._URI_SCHEMES:
        gpath._URI_PREFIXES += ("ram://",)
        gpath._URI_SCHEMES = gpath._URI_SCHEMES | {"ram"}
        gpath._URI_MAP_ROOT["ram://"] = "/ram/"
        gpath._PREFIX_TO_BACKEND["ram"] = backend.tf_backend
        register._URI_PREFIXES_TO_CLS["ram://"] = gpath.PosixGPath
    return f"ram://{uuid.uuid4().hex}/work"
