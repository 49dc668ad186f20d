"""The training loop: `train(config, workdir)` reads top to bottom.

A run writes into its work directory: `metrics.jsonl` (one JSON record per log line and evaluation),
`tb/` (TensorBoard scalars), `checkpoints/` and `best/` (Orbax), `results.txt` (the final per-dataset
table), `text/` (the text table), `profile/` (a jax.profiler trace of `config.train.profile_steps`)
and, for the embedded default, `synthetic/` (the generated shards).

Host-device traffic: the next batch is on its way to the devices while a step runs
(`sharding.prefetch_to_device`); the step's metrics stay on the devices until a log, evaluation or
checkpoint step fetches all of them at once. The step itself never applies a non-finite update; the
loop reports one when it fetches.
"""

import contextlib
import json
import logging
import os
import time

import jax
import numpy as np
import tqdm
from etils import epath
from flax.metrics import tensorboard

from ppt_jax import files
from ppt_jax.data import pipeline
from ppt_jax.train import checkpoint, evaluate, lock, optim, setup, sharding
from ppt_jax.train import step as step_lib

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A train step produced a NaN/inf loss or gradient; its update was not applied."""


def train(config, workdir):
    """Train (resuming from the latest checkpoint), evaluate, save; returns the final results.

    Process 0 holds the work directory's lock for the whole run (`lock.WorkdirLock`)."""
    with lock.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train(config, workdir)


def _train(config, workdir):
    run = setup.prepare(config, workdir)
    cfg = run.config
    steps = setup.total_steps(cfg)
    tx, lr_fn = optim.make_optimizer(cfg.optim, steps)
    ckpts = checkpoint.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    allowed = [k.strip() for k in cfg.train.allow_resume_changes.split(",") if k.strip()]
    restored = ckpts.restore(setup.abstract_state(run, tx),
                             check_meta=checkpoint.resume_check(cfg.to_dict(), allowed))
    if restored is None:
        variables, loaded = setup.init_variables(run.model, cfg, cfg.seed), 0
        if cfg.init.export_dir:
            variables, loaded = setup.init_from_export(run, variables)
        state, start, best = setup.new_state(variables, tx, cfg.seed, run.mesh), 0, -1.0
    else:
        (state, meta), loaded = restored, 0
        start, best = meta["data"]["step"], meta["best_mIoU"]
        log.info("Resumed at data step %d (%d updates applied)", start, int(state.step))
    train_stats = setup.level_stats(workdir, "train", lambda: setup.train_crops(cfg))
    train_spec = setup.hierarchy_spec(cfg, cfg.data.num_sites, train_stats)
    setup.log_padding(train_spec, train_stats, "train")
    train_step = step_lib.make_train_step(run.model, tx, lr_fn, train_spec, len(run.conditions),
                                          run.mesh)
    validate = evaluate.make_validator(run)
    # A bounded pipeline, read to its end (pipeline.TrainIterator): to the stop step when it lies ahead.
    last = cfg.train.stop_at_step if start < cfg.train.stop_at_step < steps else steps
    host_batches = pipeline.train_dataset(cfg.data, jax.process_index(), jax.process_count(),
                                          start_step=start, steps=last - start,
                                          level_sites=train_spec.capacities[1:])
    batches = sharding.prefetch_to_device(
        host_batches, lambda b: (pipeline.batch_metrics(b), run.device_batch(b, pipeline.TRAIN_KEYS[:-1])))
    local = cfg.data.batch_size // jax.process_count()
    log.info("process %d of %d: rows [%d, %d) of every global batch of %d rows", jax.process_index(),
             jax.process_count(), jax.process_index() * local, (jax.process_index() + 1) * local,
             cfg.data.batch_size)
    rec = Recorder(workdir, None if restored is None else start)
    rec.write({"event": "start", "step": start, "total_steps": steps,
               "synthetic": run.synthetic, "text_encoder": run.text_info,
               "devices": jax.device_count(), "init_arrays_loaded": loaded,
               "config": cfg.to_dict()})
    metrics = _Metrics(run, rec)
    progress = _Progress(start, steps)
    profile = _Profile(cfg.train.profile_steps, os.path.join(workdir, "profile"))
    preempt = checkpoint.Preemption()

    def meta(done, best_miou):
        return {"data": {"step": done}, "best_mIoU": best_miou,
                "config": checkpoint.config_record(cfg.to_dict())}

    def save(done):
        ckpts.save(done, state, meta(done, best))

    def record_eval(done):
        nonlocal best
        results = validate(evaluate.variables_of(state))
        mean = _log_eval(rec, done, results)
        if mean > best:
            ckpts.save_best(done, state, meta(done, mean), mean)
            best = mean
        return results

    try:
        for step in range(start, steps):
            profile.before(step)
            batch_metrics, batch = next(batches)
            state, m = train_step(state, batch)
            metrics.add(step, m)
            done = step + 1
            profile.after(done)
            log_now = done % cfg.train.log_every == 0 or done == steps
            eval_now = cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != steps
            save_now = done % cfg.train.checkpoint_every == 0
            stop_now = preempt.reached(done) or done == cfg.train.stop_at_step
            if log_now or eval_now or save_now or stop_now or done == steps:
                metrics.fetch()            # the only host sync of the loop's steps
            if log_now:
                metrics.log(done, steps, progress.line(done), batch_metrics)
            if eval_now:
                record_eval(done)
            if save_now:
                save(done)
            if stop_now:
                why = "SIGTERM" if preempt.requested else "config.train.stop_at_step"
                save(done)
                log.warning("Stopped at step %d (%s); checkpoint saved, rerun to resume", done, why)
                rec.write({"event": "stopped", "step": done, "reason": why})
                return None
        results = record_eval(steps)
        save(steps)
        evaluate.final_table(run, results, f"after {steps} steps")
        rec.write({"event": "final", "step": steps, "results": results,
                   "text_encoder": run.text_info})
        return results
    finally:
        profile.close()
        preempt.close()
        rec.close()
        ckpts.close()


def _log_eval(rec, step, results):
    """Log and record one evaluation; returns its mean mIoU over the datasets."""
    names = list(results)
    mean = float(np.mean([results[n]["mIoU"] for n in names]))
    for n in names:
        log.info("eval step %d  %s  mIoU %.4f  mAcc %.4f  allAcc %.4f", step, n,
                 results[n]["mIoU"], results[n]["mAcc"], results[n]["allAcc"])
    rec.write({"event": "eval", "step": step, "mean_mIoU": mean, "results": results},
              {f"eval/{n}/mIoU": results[n]["mIoU"] for n in names} | {"eval/mean_mIoU": mean})
    return mean


class _Metrics:
    """The train step's metrics: kept on the devices, fetched in one transfer, then checked (a
    non-finite step or a crop over the level capacities: the step applied no update)."""

    def __init__(self, run, rec):
        self.names, self.rec, self.cfg, self.workdir = run.conditions, rec, run.config, run.workdir
        self.pending = []     # (step, device metrics) not fetched yet
        self.fetched = []     # (step, host metrics) since the last log line

    def add(self, step, m):
        self.pending.append((step, m))

    def fetch(self):
        host = jax.device_get(self.pending)
        self.pending = []
        for step, m in host:
            if not m["finite"]:
                self._nonfinite(step, m)
            if m["dropped_sites"].any() or m["dropped_pairs"].any():
                self._overflow(step, m)
        self.fetched += host

    def _nonfinite(self, step, m):
        msg = nonfinite_message(step, m, self.names)
        self.rec.write({"event": "nonfinite", "step": step, "message": msg})
        if self.cfg.train.on_nonfinite == "raise":
            raise NonFiniteError(msg)
        log.error("%s; skipping the batch (config.train.on_nonfinite='skip')", msg)

    def _overflow(self, step, m):
        sparse_cfg = self.cfg.sparse
        msg = (f"step {step}: a crop needs more than the measured level capacities (sites over "
               f"capacity per level {m['dropped_sites'].tolist()}, 3x3x3 pairs over capacity "
               f"{m['dropped_pairs'].tolist()}; the update was not applied)")
        self.rec.write({"event": "overflow", "step": step, "message": msg})
        if sparse_cfg.on_overflow == "raise":
            raise ValueError(f"{msg}: raise config.sparse.pair_margin (now {sparse_cfg.pair_margin}), "
                             f"config.sparse.capacity_margin (now {sparse_cfg.capacity_margin}) or "
                             f"config.sparse.sizing_crops and delete "
                             f"{self.workdir}/level_sizes_train.json, or set config.sparse.on_overflow=skip")
        log.error("%s; skipping the batch (config.sparse.on_overflow='skip')", msg)

    def log(self, done, steps, progress, batch_metrics):
        m = self.fetched[-1][1]
        loss = float(np.mean([f["loss"] for _, f in self.fetched]))
        log.info("step %d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %s", done, steps, loss, m["lr"],
                 m["grad_norm"], progress)
        self.rec.write({"event": "train", "step": done, "loss": loss, "last_loss": float(m["loss"]),
                        "lr": m["lr"], "grad_norm": m["grad_norm"],
                        "dataset_rows": m["dataset_rows"].tolist(), **batch_metrics,
                        "dropped_sites": m["dropped_sites"].tolist()},
                       {"train/loss": loss, "train/lr": m["lr"], "train/grad_norm": m["grad_norm"]})
        self.fetched = []


def nonfinite_message(step, m, names):
    """What a non-finite step did, for the log and metrics.jsonl (`m`: its fetched metrics)."""
    present = [n for n, c in zip(names, np.asarray(m["dataset_rows"])) if c]
    return (f"step {step}: non-finite loss {float(m['loss'])} / gradient norm "
            f"{float(m['grad_norm'])} on a batch of dataset(s) {present}; the update was NOT applied "
            f"(state kept at step {step})")


class _Progress:
    """Steps per second over the last log window and the ETA, formatted by tqdm."""

    FORMAT = "{rate_fmt}  ETA {remaining}"

    def __init__(self, start, steps):
        self.steps, self.last, self.t0 = steps, start, time.time()

    def line(self, done):
        now = time.time()
        rate = (done - self.last) / max(now - self.t0, 1e-9)
        self.last, self.t0 = done, now
        return tqdm.tqdm.format_meter(done, self.steps, 0, rate=rate, unit="step",
                                      bar_format=self.FORMAT).strip()


class _Profile:
    """A jax.profiler trace of steps first..last (`config.train.profile_steps`, counted from 1 as
    in the log lines) into `logdir`, if asked for."""

    def __init__(self, steps, logdir):
        steps = tuple(steps)
        if len(steps) not in (0, 2) or (steps and not 1 <= steps[0] <= steps[1]):
            raise ValueError(f"config.train.profile_steps must be () or (first, last) with "
                             f"1 <= first <= last, got {steps}")
        self.steps, self.logdir, self.active = steps, logdir, False

    def before(self, step):
        if self.steps and step + 1 == self.steps[0]:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, done):
        if self.active and done == self.steps[1]:
            self.close()
            log.info("Profiled steps %d-%d into %s", *self.steps, self.logdir)

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _json_default(x):
    return x.item() if hasattr(x, "item") else str(x)


# Per-step records a resumed run writes again: (event, first step index that belongs to the steps
# after the checkpoint `start`). "nonfinite" records carry the 0-based index of the failing step.
_REPLAYED = {"train": 1, "eval": 1, "nonfinite": 0}


def drop_replayed(lines, start):
    """The metrics.jsonl lines that stay when a run resumes from its checkpoint at `start`: the
    records of the steps after `start` are dropped, as the resumed run writes them again."""
    keep = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue                      # a line cut short by a kill
        first = _REPLAYED.get(r.get("event"))
        if first is None or r.get("step", 0) < start + first:
            keep.append(line)
    return keep


class Recorder:
    """metrics.jsonl + TensorBoard scalars (flax's SummaryWriter), written by process 0 only.

    `resume_step`: the checkpoint step this run resumed from (None: a fresh start); records of later
    steps left by a killed run are removed first, so that the file holds one record per step.
    """

    def __init__(self, workdir, resume_step=None):
        self.active = jax.process_index() == 0
        if self.active:
            path = epath.Path(workdir) / "metrics.jsonl"
            if resume_step is not None and path.exists():
                keep = drop_replayed(path.read_text().splitlines(), resume_step)
                files.write_text(path, "".join(line + "\n" for line in keep))
            self._files = contextlib.ExitStack()
            self.file = self._files.enter_context(path.open("a"))
            self.tb = tensorboard.SummaryWriter(os.fspath(epath.Path(workdir) / "tb"),
                                                auto_flush=False)

    def write(self, record, scalars=None):
        if not self.active:
            return
        self.file.write(json.dumps(record, default=_json_default) + "\n")
        self.file.flush()
        for tag, value in (scalars or {}).items():
            self.tb.scalar(tag, float(value), int(record.get("step", 0)))
        if scalars:
            self.tb.flush()

    def close(self):
        if self.active:
            self._files.close()
            self.tb.close()
