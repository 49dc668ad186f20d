"""Checkpoint round trips: exact restore, keep-N, best-by-mIoU, export/load, SIGTERM flag."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppt_jax.train import checkpoint


def _state(seed):
    k = jax.random.key(seed)
    params = {"backbone": {"w": jax.random.normal(k, (4, 3))}, "head": {"b": jnp.arange(3.0)}}
    tx = optax.sgd(0.1, momentum=0.9)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(seed),
            "batch_stats": {"backbone": {"mean": jnp.ones(3) * seed}},
            "rng": jax.random.key_data(jax.random.fold_in(k, 1))}


def _assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_periodic_keep_n_and_exact_restore(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path, keep=2)
    assert ckpt.restore(_state(0)) is None
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"data_step": step * 10})
    assert ckpt.periodic.all_steps() == [2, 3]
    state, meta = ckpt.restore(_state(0))
    _assert_trees_equal(state, _state(3))
    assert meta == {"data_step": 30}
    ckpt.close()


def test_best_keeps_the_highest_miou(tmp_path):
    ckpt = checkpoint.Checkpoints(tmp_path)
    for step, miou in ((1, 0.2), (2, 0.6), (3, 0.4)):
        ckpt.save_best(step, _state(step), {"mIoU": miou}, miou)
    state, meta = ckpt.restore(_state(0), which="best")
    assert meta["mIoU"] == 0.6
    _assert_trees_equal(state, _state(2))
    ckpt.close()


@pytest.mark.parametrize("part", ["full", "backbone"])
def test_export_round_trip(tmp_path, part):
    s = _state(5)
    variables = {"params": s["params"], "batch_stats": s["batch_stats"]}
    checkpoint.export(tmp_path / "exp", variables, {"model": {"width": 8}}, part=part)
    loaded, meta = checkpoint.load_export(tmp_path / "exp")
    want = variables if part == "full" else {k: {"backbone": v["backbone"]}
                                             for k, v in variables.items()}
    _assert_trees_equal(loaded, want)
    assert meta == {"part": part, "config": {"model": {"width": 8}}}


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no 'backbone' subtree"):
        checkpoint.export(tmp_path / "e", {"params": {"enc": 1.0}}, {}, part="backbone")
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        checkpoint.load_export(tmp_path)


def test_sigterm_sets_the_flag_instead_of_killing():
    flag = checkpoint.Preemption()
    try:
        assert not flag.reached(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.reached(1)
    finally:
        flag.close()
