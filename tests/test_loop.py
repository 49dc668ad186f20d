"""The loop's parts without a model: metrics fetched in one transfer and checked there, batches
prefetched to the devices in order, the profile window and the progress line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppt_jax.train import loop, sharding


class _Records:
    def __init__(self):
        self.records = []

    def write(self, record, scalars=None):
        self.records.append(record)


class _Run:
    conditions = ("Structured3D", "ScanNet", "S3DIS")
    workdir = "/nowhere"

    def __init__(self, on_nonfinite="raise"):
        from configs import base
        self.config = base.recipe("x")
        self.config.train.on_nonfinite = on_nonfinite


def _step_metrics(loss, finite=True, rows=(1, 0, 0)):
    return {"loss": jnp.float32(loss), "grad_norm": jnp.float32(1.0), "lr": jnp.float32(0.1),
            "finite": jnp.bool_(finite), "dataset_rows": jnp.array(rows, jnp.int32),
            "dropped_sites": jnp.zeros(5, jnp.int32), "dropped_pairs": jnp.zeros(5, jnp.int32)}


def test_metrics_stay_on_device_until_fetched():
    rec = _Records()
    m = loop._Metrics(_Run(), rec)
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        for step in range(3):
            m.add(step, _step_metrics(step + 1.0))      # no transfer: refused by the guard
    m.fetch()
    m.log(3, 10, "", {})
    assert rec.records[-1]["loss"] == pytest.approx(2.0) and rec.records[-1]["last_loss"] == 3.0


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_a_nonfinite_step_is_named_when_fetched(mode):
    rec = _Records()
    m = loop._Metrics(_Run(mode), rec)
    m.add(0, _step_metrics(1.0))
    m.add(1, _step_metrics(np.nan, finite=False, rows=(0, 2, 0)))
    if mode == "raise":
        with pytest.raises(loop.NonFiniteError, match=r"step 1: non-finite loss nan .*\['ScanNet'\]"):
            m.fetch()
    else:
        m.fetch()
    assert [r["step"] for r in rec.records if r["event"] == "nonfinite"] == [1]


def test_prefetch_to_device_keeps_order_and_runs_ahead():
    pulled = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield i

    out = sharding.prefetch_to_device(source(), lambda b: jnp.full(2, b), size=2)
    assert int(next(out)[0]) == 0 and pulled == [0, 1]     # the next batch already on its way
    assert int(next(out)[0]) == 1 and pulled == [0, 1, 2]
    assert [int(b[0]) for b in out] == [2, 3, 4]


@pytest.mark.parametrize("steps", [(0, 3), (5, 2), (1,)])
def test_profile_steps_are_checked(steps, tmp_path):
    with pytest.raises(ValueError, match="config.train.profile_steps"):
        loop._Profile(steps, str(tmp_path))


def test_progress_line_gives_rate_and_eta():
    progress = loop._Progress(0, 100)
    progress.t0 -= 10.0                                   # 20 steps in 10 s
    assert progress.line(20) == "2.00step/s  ETA 00:40"


def test_a_crop_over_the_level_capacities_is_named_when_fetched():
    rec, run = _Records(), _Run()
    m = loop._Metrics(run, rec)
    over = dict(_step_metrics(1.0), dropped_pairs=jnp.array([0, 3, 0, 0, 0], jnp.int32))
    m.add(4, over)
    with pytest.raises(ValueError, match=r"step 4: a crop needs more .*pairs over capacity \[0, 3"):
        m.fetch()
    run.config.sparse.on_overflow = "skip"
    m = loop._Metrics(run, rec)
    m.add(4, over)
    m.fetch()
    assert [r["event"] for r in rec.records] == ["overflow", "overflow"]
