"""Shared test set-up: JAX's persistent compilation cache for the whole suite, and shared fixtures.

In-process tests and the `python -m ppt_jax.main` subprocesses of the end-to-end tests use one cache
directory, kept between runs (`$PPT_TEST_COMPILATION_CACHE`, default `~/.cache/ppt_jax/jax-tests`):
programs compiled once, by any test, in any earlier run, are loaded instead of compiled.
"""

import os
import uuid

import pytest

from ppt_jax import compilation_cache

ENV_CACHE = "PPT_TEST_COMPILATION_CACHE"
os.environ.setdefault(ENV_CACHE, compilation_cache.default_dir() + "-tests")   # subprocesses read it
compilation_cache.enable(os.environ[ENV_CACHE])


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
