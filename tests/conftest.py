"""Shared test set-up: JAX's persistent compilation cache for the whole suite, and the helpers and
fixtures more than one test file uses (test files import the helpers: `from conftest import REPO`).

In-process tests and the `python -m ppt_jax.main` subprocesses of the end-to-end tests use one cache
directory, kept between runs (`$PPT_TEST_COMPILATION_CACHE`, default `~/.cache/ppt_jax/jax-tests`):
programs compiled once, by any test, in any earlier run, are loaded instead of compiled.

Tests compile with XLA's backend (LLVM) optimisation level 0 (`TEST_XLA_FLAGS`, in-process and in every
subprocess): the same HLO programs and the same numbers within the tests' tolerances, for about a third
less compile CPU (tests/test_ptv3.py + tests/test_models.py, cold cache: 178 -> 112 CPU-s); the
suite's time is mostly compiling. Users' runs and benchmarks keep XLA's default (level 2).
"""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from ppt_jax import compilation_cache

ENV_CACHE = "PPT_TEST_COMPILATION_CACHE"
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()   # before JAX's backend
os.environ.setdefault(ENV_CACHE, compilation_cache.default_dir() + "-tests")   # subprocesses read it
compilation_cache.enable(os.environ[ENV_CACHE])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")     # committed reference data (tests/data/README.md)
CLIP_BPE = os.path.join(DATA, "bpe_simple_vocab_16e6.txt.gz")   # CLIP's own vocabulary


def cpu_env(devices=1, **extra):
    """The environment of a subprocess that runs ppt_jax (`python -m ppt_jax.main`, a probe script): CPU
    with `devices` simulated devices, the suite's compilation cache and XLA flags, no hub access, quiet
    TensorFlow."""
    return dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=os.environ[ENV_CACHE], TF_CPP_MIN_LOG_LEVEL="2",
                XLA_FLAGS=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}", **extra)


def run_main(devices, workdir, *flags, config="configs/tiny.py", mode="train", stderr=None):
    """stdout of one `python -m ppt_jax.main` run on `devices` simulated CPU devices (it must succeed);
    its stderr (JAX's compile log) into the file `stderr`."""
    cmd = [sys.executable, "-m", "ppt_jax.main", f"--config={config}", f"--workdir={workdir}",
           f"--mode={mode}", *flags]
    env = cpu_env(devices)
    if stderr is not None:
        env["JAX_LOG_COMPILES"] = "1"      # JAX logs "Compiling jit(<fn>) ..." for every compile
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    if stderr is not None:
        stderr.write_text(out.stderr)
    return out.stdout


def records(workdir, event):
    """The records of one event ("start", "train", "final", ...) in a run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["event"] == event]


def read_split(split_dir):
    """(manifest, {scene: decoded dict}) over every shard the split's manifest names."""
    import tensorflow as tf                  # imported here: most test files never need it

    from ppt_jax.data import schema

    manifest = schema.read_manifest(split_dir)
    scenes = {}
    for shard in manifest["shards"]:
        for record in tf.data.TFRecordDataset(os.path.join(split_dir, shard["file"])):
            scene = schema.decode_scene(record.numpy())
            scenes[scene["scene"]] = scene
    return manifest, scenes


def pointcept_spunet_shapes(channels, layers, base_channels, context_channels=256, text_dim=512, in_channels=6):
    """Key -> shape of a Pointcept PPT-v1m1(SpUNet-v1m3) state dict, as its constructors build it (the
    arguments are `models.PPT`'s size fields)."""
    base, context = base_channels, context_channels
    keys = {}

    def pdbn(prefix, c):
        for i in range(3):
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{prefix}.bns.{i}.{leaf}"] = (c,)
            keys[f"{prefix}.bns.{i}.num_batches_tracked"] = ()
        keys[f"{prefix}.modulation.1.weight"] = (2 * c, context)
        keys[f"{prefix}.modulation.1.bias"] = (2 * c,)

    def block(prefix, cin, cout):
        keys[f"{prefix}.conv1.weight"] = (cout, 3, 3, 3, cin)
        pdbn(f"{prefix}.bn1", cout)
        keys[f"{prefix}.conv2.weight"] = (cout, 3, 3, 3, cout)
        pdbn(f"{prefix}.bn2", cout)
        if cin != cout:
            keys[f"{prefix}.proj_conv.weight"] = (cout, 1, 1, 1, cin)
            pdbn(f"{prefix}.proj_norm", cout)

    keys["backbone.conv_input.conv.weight"] = (base, 5, 5, 5, in_channels)
    pdbn("backbone.conv_input.bn", base)
    enc, dec = base, channels[-1]
    for s in range(4):
        keys[f"backbone.down.{s}.conv.weight"] = (channels[s], 2, 2, 2, enc)
        pdbn(f"backbone.down.{s}.bn", channels[s])
        for i in range(layers[s]):
            block(f"backbone.enc.{s}.block{i}", channels[s], channels[s])
        keys[f"backbone.up.{s}.conv.weight"] = (dec, 2, 2, 2, channels[8 - s - 2])
        pdbn(f"backbone.up.{s}.bn", dec)
        for i in range(layers[8 - s - 1]):
            block(f"backbone.dec.{s}.block{i}", dec + enc if i == 0 else dec, dec)
        enc, dec = channels[s], channels[8 - s - 2]
    keys["embedding_table.weight"] = (3, context)
    keys["proj_head.weight"] = (text_dim, channels[-1])
    keys["proj_head.bias"] = (text_dim,)
    keys["class_embedding"] = (36, text_dim)
    keys["logit_scale"] = ()
    return keys


def pointcept_random_state(shapes, seed=0):
    """A random state dict of `shapes`, saved under DDP names (`module.`)."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(7, np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[k] = rng.normal(size=shape).astype(np.float32)
    state["logit_scale"] = np.array(np.log(100.0), np.float32)
    return {f"module.{k}": v for k, v in state.items()}          # as saved under DDP


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
