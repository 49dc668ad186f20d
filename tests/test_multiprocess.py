"""Two processes on 127.0.0.1 (JAX distributed runtime, gloo CPU collectives) train like one.

Each process feeds only its half of every global batch (rows split by process index, as the
pipeline splits shards), the jitted step sees the assembled global batch, and the parameters after
a few SGD steps equal a single-process run fed the whole batch. The two processes are started by `launch/local.sh`; this file is also their worker script:
`python tests/test_multiprocess.py OUT_DIR` (the distributed settings come from `PPT_*` variables).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

GLOBAL_BATCH, FEATURES, CLASSES, STEPS = 4, 6, 5, 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def global_batch(step):
    """The whole batch of `step`, identical in every process (a stand-in for the shard reader)."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=(GLOBAL_BATCH,)).astype(np.int32)
    return x, y


def run_worker(out_dir):
    from ppt_jax import distributed
    proc = distributed.maybe_initialize()          # PPT_DISTRIBUTED decides
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(CLASSES)])
    params = model.init(jax.random.key(0), jnp.zeros((1, FEATURES)))
    opt = optax.sgd(0.1, momentum=0.9)
    state = jax.device_put((params, opt.init(params)), replicated)

    def step(state, x, y):
        params, opt_state = state

        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), loss, jnp.sum(x), y

    step = jax.jit(step, out_shardings=(replicated, replicated, replicated, rows))

    per_process = GLOBAL_BATCH // proc.process_count
    mine = slice(proc.process_index * per_process, (proc.process_index + 1) * per_process)
    losses, seen = [], []
    for i in range(STEPS):
        x, y = global_batch(i)
        gx = jax.make_array_from_process_local_data(rows, x[mine])
        gy = jax.make_array_from_process_local_data(rows, y[mine])
        state, loss, xsum, labels = step(state, gx, gy)
        losses.append(float(loss))
        seen.append((gx.shape[0], float(xsum), np.asarray(
            jax.experimental.multihost_utils.process_allgather(labels, tiled=True))))
    flat = [leaf.addressable_data(0) for leaf in jax.tree.leaves(state[0])]   # replicated
    np.savez(os.path.join(out_dir, f"p{proc.process_index}.npz"), losses=np.array(losses), rows=np.array([s[0] for s in seen]),
             xsum=np.array([s[1] for s in seen]), labels=np.stack([s[2] for s in seen]),
             process=np.array([proc.process_index, proc.process_count, proc.global_devices]),
             **{f"leaf{i}": np.asarray(leaf) for i, leaf in enumerate(flat)})


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPT_") and k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **extra)
    return env


def _start(argv, **extra):
    return subprocess.Popen(argv, env=_env(**extra), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=120):
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("worker timed out")
        assert p.returncode == 0, out


def test_two_processes_equal_one(tmp_path):
    worker = [sys.executable, os.path.abspath(__file__)]
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    _finish([_start(["bash", "launch/local.sh", "-n", "2", "-l", str(tmp_path / "logs"), "--",
                     *worker, str(tmp_path / "two")]),
             _start([*worker, str(tmp_path / "one")])])
    results = [np.load(tmp_path / "two" / f"p{i}.npz") for i in range(2)]
    single = np.load(tmp_path / "one" / "p0.npz")

    assert list(single["process"]) == [0, 1, 1]
    for i, res in enumerate(results):
        assert list(res["process"]) == [i, 2, 2]
        # every process's step saw the whole global batch: its rows, its sum, its labels
        assert list(res["rows"]) == [GLOBAL_BATCH] * STEPS
        for s in range(STEPS):
            x, y = global_batch(s)
            np.testing.assert_allclose(res["xsum"][s], x.sum(), rtol=1e-5)
            np.testing.assert_array_equal(res["labels"][s], y)
        np.testing.assert_allclose(res["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        leaves = sorted(k for k in single.files if k.startswith("leaf"))
        assert leaves
        for k in leaves:
            np.testing.assert_allclose(res[k], single[k], rtol=1e-5, atol=1e-6)
    assert single["losses"][-1] < single["losses"][0]      # it did train


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    run_worker(sys.argv[1])
