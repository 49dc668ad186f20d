"""The training loop and the eval / test / export modes (one readable function each).

A run writes into its work directory: `metrics.jsonl` (one JSON record per log line and evaluation),
`tb/` (TensorBoard scalars), `checkpoints/` and `best/` (Orbax), `results.txt` (the final per-dataset
table) and, for the embedded default, `synthetic/` (the generated shards) and `text/` (the text table).
"""

import contextlib
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from etils import epath
from flax import traverse_util

from ppt_jax import data, distributed, labels
from ppt_jax.train import checkpoint, lock, metrics, optim, setup, sharding
from ppt_jax.train import step as step_lib

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A train step produced a NaN/inf loss or gradient; its update was not applied."""


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
    """metrics.jsonl + TensorBoard scalars, written by process 0 only.

    `resume_step`: the checkpoint step this run resumed from (None: a fresh start); records of later
    steps left by a killed run are removed first, so that the file holds one record per step.
    """

    def __init__(self, workdir, resume_step=None):
        self.active = jax.process_index() == 0
        if self.active:
            path = epath.Path(workdir) / "metrics.jsonl"
            if resume_step is not None and path.exists():
                keep = drop_replayed(path.read_text().splitlines(), resume_step)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in keep))
                tmp.replace(path)
            self._files = contextlib.ExitStack()
            self.file = self._files.enter_context(path.open("a"))
            self.tb = tf.summary.create_file_writer(os.fspath(epath.Path(workdir) / "tb"))

    def write(self, record, scalars=None):
        if not self.active:
            return
        self.file.write(json.dumps(record, default=_json_default) + "\n")
        self.file.flush()
        if scalars:
            # A raw Summary proto: tf.summary.scalar needs the tensorboard package, this does not.
            summary = tf.compat.v1.Summary(value=[
                tf.compat.v1.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])
            with self.tb.as_default():
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(),
                                                     step=int(record.get("step", 0)))
            self.tb.flush()

    def close(self):
        if self.active:
            self._files.close()
            self.tb.close()


def _process_zero_first(fn):
    """`fn()` on process 0, then on the others, which find what it wrote (the embedded synthetic
    shards, the text-table cache) instead of writing the same files at the same time."""
    if jax.process_index() == 0:
        out = fn()
    distributed.wait_for_all("ppt_jax_data_and_text_ready")
    if jax.process_index() != 0:
        out = fn()
    return out


def prepare(config, workdir):
    """Resolve data, build the text table, model and mesh: a `setup.Run`."""
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)

    def data_and_text():
        resolved, synthetic = setup.resolve_data(config, workdir)
        return resolved, synthetic, *setup.text_table(resolved, workdir)

    config, synthetic, table, text_info = _process_zero_first(data_and_text)
    mesh = sharding.make_mesh()
    for field in ("batch_size", "eval_batch_size", "test_batch_size"):
        sharding.check_host_rows(mesh, config.data[field], f"config.data.{field}")
    return setup.Run(config=config, workdir=workdir, mesh=mesh, model=setup.build_model(config, table),
                     cond_map=setup.condition_map(config), text_info=text_info, synthetic=synthetic)


def _to_device(run, batch, keys):
    batch = {k: batch[k] for k in keys}
    batch["condition"] = run.cond_map[batch["condition"]]
    return sharding.global_batch(batch, run.mesh)


def _nonfinite_message(step, m, names):
    present = [n for n, c in zip(names, np.asarray(m["dataset_rows"])) if c]
    return (f"step {step}: non-finite loss {float(m['loss'])} / gradient norm "
            f"{float(m['grad_norm'])} on a batch of dataset(s) {present}; the update was NOT applied "
            f"(state kept at step {step})")


# Settings an export's weights were made for that its arrays' shapes do not show.
EXPORT_SETTINGS = (("model", "s3dis_order"), ("data", "color_norm"))


def _export_setting(config, section, name):
    defaults = {"color_norm": data.pipeline.DEFAULT_COLOR_NORM}   # exports older than the field
    return config[section].get(name, defaults.get(name))


def _load_init(run, variables):
    """Overwrite fresh variables with an exported model (config.init.export_dir), path by path."""
    exported, meta = checkpoint.load_export(run.config.init.export_dir)
    saved_config = ml_collections.ConfigDict(meta["config"])
    differ = [f"config.{sec}.{name}: export {_export_setting(saved_config, sec, name)!r}, this run "
              f"{_export_setting(run.config, sec, name)!r}" for sec, name in EXPORT_SETTINGS
              if _export_setting(saved_config, sec, name) != _export_setting(run.config, sec, name)]
    if differ:
        raise ValueError(f"config.init.export_dir {run.config.init.export_dir} was made for other "
                         f"settings ({'; '.join(differ)}): set them to the export's values, e.g. "
                         + " ".join(f"--config.{sec}.{name}={_export_setting(saved_config, sec, name)}"
                                    for sec, name in EXPORT_SETTINGS))
    fresh = traverse_util.flatten_dict(variables, sep="/")
    saved = traverse_util.flatten_dict(exported, sep="/")
    unknown = sorted(set(saved) - set(fresh))
    if unknown:
        raise ValueError(f"config.init.export_dir: arrays {unknown[:5]} of the export do not exist "
                         f"in this model (config.model must match the exported one)")
    for path, value in saved.items():
        if np.shape(value) != np.shape(fresh[path]):
            raise ValueError(f"config.init.export_dir: {path} has shape {np.shape(value)} in the "
                             f"export, {np.shape(fresh[path])} in this model")
        fresh[path] = jnp.asarray(value, fresh[path].dtype)
    log.info("Initialised %d of %d arrays from the %s export %s", len(saved), len(fresh),
                 meta["part"], run.config.init.export_dir)
    return traverse_util.unflatten_dict(fresh, sep="/"), len(saved)


def train(config, workdir):
    """Train (resuming from the latest checkpoint), evaluate, save; returns the final results.

    Process 0 holds the work directory's lock for the whole run (`lock.WorkdirLock`)."""
    with lock.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train(config, workdir)


def _train(config, workdir):
    run = prepare(config, workdir)
    cfg = run.config
    steps = setup.total_steps(cfg)
    tx, lr_fn = optim.make_optimizer(cfg.optim, steps)
    variables = setup.init_variables(run.model, cfg, cfg.seed)
    loaded = 0
    if cfg.init.export_dir:
        variables, loaded = _load_init(run, variables)
    state = setup.new_state(variables, tx, cfg.seed, run.mesh)
    ckpts = checkpoint.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    allowed = [k.strip() for k in cfg.train.allow_resume_changes.split(",") if k.strip()]
    restored = ckpts.restore(state, check_meta=checkpoint.resume_check(cfg.to_dict(), allowed))
    best, start = -1.0, 0
    if restored is not None:
        state, meta = restored
        best, start = meta["best_mIoU"], meta["data"]["step"]
        log.info("Resumed at data step %d (%d updates applied)", start, int(state.step))
    train_stats = setup.level_stats(workdir, "train", lambda: setup.train_crops(cfg))
    train_spec = setup.hierarchy_spec(cfg, cfg.data.num_sites, train_stats)
    setup.log_padding(train_spec, train_stats, "train")
    train_step = step_lib.make_train_step(run.model, tx, lr_fn, train_spec, len(run.conditions),
                                          run.mesh)
    batches = data.train_dataset(cfg.data, jax.process_index(), jax.process_count(), start_step=start)
    local = cfg.data.batch_size // jax.process_count()
    log.info("process %d of %d: rows [%d, %d) of every global batch of %d rows", jax.process_index(),
             jax.process_count(), jax.process_index() * local, (jax.process_index() + 1) * local,
             cfg.data.batch_size)
    rec = Recorder(workdir, None if restored is None else start)
    rec.write({"event": "start", "step": start, "total_steps": steps, "synthetic": run.synthetic,
               "text_encoder": run.text_info, "devices": jax.device_count(),
               "init_arrays_loaded": loaded, "config": cfg.to_dict()})
    preempt = checkpoint.Preemption()
    window, t0, last = [], time.time(), start

    def save(step_now):
        ckpts.save(step_now, state, {"data": batches.state(), "best_mIoU": best,
                                     "config": checkpoint.config_record(cfg.to_dict())})

    try:
        for step in range(start, steps):
            batch = next(batches)
            bm = data.batch_metrics(batch)
            state, m = train_step(state, _to_device(run, batch, data.pipeline.TRAIN_KEYS[:-1]))
            m = jax.device_get(m)
            if not m["finite"]:
                msg = _nonfinite_message(step, m, run.conditions)
                rec.write({"event": "nonfinite", "step": step, "message": msg})
                if cfg.train.on_nonfinite == "raise":
                    raise NonFiniteError(msg)
                log.error("%s; skipping the batch (config.train.on_nonfinite='skip')", msg)
            if m["dropped_sites"].any() or m["dropped_pairs"].any():
                msg = (f"step {step}: a crop needs more than the measured level capacities (sites over "
                       f"capacity per level {m['dropped_sites'].tolist()}, 3x3x3 pairs over capacity "
                       f"{m['dropped_pairs'].tolist()}; the update was not applied)")
                rec.write({"event": "overflow", "step": step, "message": msg})
                if cfg.sparse.on_overflow == "raise":
                    raise ValueError(f"{msg}: raise config.sparse.capacity_margin (now "
                                     f"{cfg.sparse.capacity_margin}) or config.sparse.sizing_crops and "
                                     f"delete {workdir}/level_sizes_train.json, or set "
                                     f"config.sparse.on_overflow=skip")
                log.error("%s; skipping the batch (config.sparse.on_overflow='skip')", msg)
            window.append(float(m["loss"]))
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                rate = (done - last) / max(time.time() - t0, 1e-9)
                eta = (steps - done) / max(rate, 1e-9)
                loss = float(np.mean(window))
                log.info("step %d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %.2f steps/s  ETA %s",
                         done, steps, loss, m["lr"], m["grad_norm"], rate, _hms(eta))
                rec.write({"event": "train", "step": done, "loss": loss, "last_loss": float(m["loss"]),
                           "lr": m["lr"], "grad_norm": m["grad_norm"], "steps_per_s": rate,
                           "dataset_rows": m["dataset_rows"].tolist(), **bm,
                           "dropped_sites": m["dropped_sites"].tolist()},
                          {"train/loss": loss, "train/lr": m["lr"], "train/grad_norm": m["grad_norm"]})
                window, t0, last = [], time.time(), done
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != steps:
                results = evaluate_state(run, state)
                best = _record_eval(run, rec, ckpts, state, done, results, best, batches)
            if done % cfg.train.checkpoint_every == 0:
                save(done)
            if preempt.reached(done) or done == cfg.train.stop_at_step:
                why = "SIGTERM" if preempt.requested else "config.train.stop_at_step"
                save(done)
                log.warning("Stopped at step %d (%s); checkpoint saved, rerun to resume", done, why)
                rec.write({"event": "stopped", "step": done, "reason": why})
                return None
        results = evaluate_state(run, state)
        best = _record_eval(run, rec, ckpts, state, steps, results, best, batches)
        save(steps)
        _final_table(run, results, f"after {steps} steps")
        rec.write({"event": "final", "step": steps, "results": results,
                   "text_encoder": run.text_info})
        return results
    finally:
        preempt.close()
        rec.close()
        ckpts.close()


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _record_eval(run, rec, ckpts, state, step, results, best, batches):
    names = list(results)
    mean = float(np.mean([results[n]["mIoU"] for n in names]))
    for n in names:
        log.info("eval step %d  %s  mIoU %.4f  mAcc %.4f  allAcc %.4f", step, n,
                     results[n]["mIoU"], results[n]["mAcc"], results[n]["allAcc"])
    rec.write({"event": "eval", "step": step, "mean_mIoU": mean, "results": results},
              {f"eval/{n}/mIoU": results[n]["mIoU"] for n in names} | {"eval/mean_mIoU": mean})
    if mean > best:
        ckpts.save_best(step, state, {"data": batches.state(), "best_mIoU": mean,
                                      "config": checkpoint.config_record(run.config.to_dict())},
                        mean)
    return max(best, mean)


def _final_table(run, results, what):
    note = run.text_info.get("note") or f"text encoder: {run.text_info.get('used')}"
    header = (f"PPT per-dataset results {what} ({'synthetic data' if run.synthetic else 'shards'};"
              f" {note})")
    table = header + "\n" + metrics.format_table(results)
    if jax.process_index() == 0:
        (epath.Path(run.workdir) / "results.txt").write_text(table + "\n")
        print(table, flush=True)
    return table


def _variables(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def eval_spec(run):
    """Capacities that fit every validation row (measured once per work directory)."""
    cfg = run.config
    stats = setup.level_stats(run.workdir, "eval", lambda: setup.eval_crops(cfg))
    spec = setup.hierarchy_spec(cfg, cfg.data.eval_num_sites, stats)
    setup.log_padding(spec, stats, "eval")
    return spec


def evaluate_state(run, state):
    """Single-pass full-resolution validation of every `config.eval.datasets` split."""
    cfg = run.config
    if "eval" not in run.steps:
        spec = eval_spec(run)
        run.steps["eval"] = step_lib.make_eval_step(run.model, spec, len(run.conditions),
                                                    run.num_classes, run.mesh)
    eval_step = run.steps["eval"]
    variables = _variables(state)
    results = {}
    for name in cfg.eval.datasets:
        conf = jax.device_put(jnp.zeros((len(run.conditions), run.num_classes, run.num_classes),
                                        jnp.int32), sharding.replicated(run.mesh))
        for batch in data.eval_dataset(cfg.eval.val_dirs[name], name, cfg.data, jax.process_index(),
                                       jax.process_count()):
            conf = eval_step(variables, conf, _to_device(run, batch, data.pipeline.EVAL_KEYS))
        d = run.conditions.index(name)
        results[name] = metrics.summarize(conf[d], labels.CLASS_NAMES[name])
    return results


def test_state(run, state):
    """The reference's test: 13 views x all GridSample fragments, softmax votes, full resolution."""
    if jax.process_count() > 1:
        raise NotImplementedError("--mode test runs on one process (voting gathers whole scenes)")
    cfg = run.config
    spec = eval_spec(run)
    vote = step_lib.make_vote_step(run.model, spec, run.mesh)
    variables = _variables(state)
    results = {}
    for name in cfg.eval.datasets:
        d = run.conditions.index(name)
        conf = np.zeros((run.num_classes, run.num_classes), np.int64)
        for scene in data.fragment_dataset(cfg.eval.val_dirs[name], name, cfg.data):
            votes = jnp.zeros((_bucket(scene["num_sites"]), run.num_classes), jnp.float32)
            for batch in scene["batches"]:
                votes = vote(variables, votes, _to_device(run, batch, data.pipeline.EVAL_KEYS[:5]
                                                          + ("index",)))
            pred = np.asarray(jnp.argmax(votes[:scene["num_sites"]], -1))[scene["inverse"]]
            conf += np.asarray(metrics.confusion(pred[None], scene["origin_segment"][None],
                                                 np.array([0]), 1, run.num_classes)[0])
        results[name] = metrics.summarize(conf, labels.CLASS_NAMES[name])
    return results


def _bucket(n):
    """Vote-buffer length: the next power of two (a handful of compiles for all scene sizes)."""
    return 1 << max(10, int(np.ceil(np.log2(max(n, 1)))))


def _with_export_model(config):
    """The config with the model, text and EXPORT_SETTINGS of config.init.export_dir
    (`--checkpoint=export`): the export's weights with the table and inputs they were made for."""
    if not config.init.export_dir:
        raise ValueError("--checkpoint=export evaluates config.init.export_dir: set it")
    _, meta = checkpoint.load_export(config.init.export_dir)
    if meta["part"] != "full":
        raise ValueError(f"config.init.export_dir {config.init.export_dir}: a '{meta['part']}' export "
                         f"has no head to evaluate (fine-tune it first)")
    saved = ml_collections.ConfigDict(meta["config"])
    config = ml_collections.ConfigDict(config.to_dict())
    config.model, config.text = saved.model, saved.text
    for section, name in EXPORT_SETTINGS:
        config[section][name] = _export_setting(saved, section, name)
    if "model" in config.synthetic.overrides:        # the export's model, also on synthetic data
        del config.synthetic.overrides["model"]
    return config


def restore_for_eval(config, workdir, which):
    """(run, state) of the work directory's `which` checkpoint, or of config.init.export_dir."""
    if which == "export":
        config = _with_export_model(config)
    run = prepare(config, workdir)
    tx, _ = optim.make_optimizer(run.config.optim, setup.total_steps(run.config))
    variables = setup.init_variables(run.model, run.config, run.config.seed)
    if which == "export":
        variables, _ = _load_init(run, variables)
        return run, setup.new_state(variables, tx, run.config.seed, run.mesh)
    state = setup.new_state(variables, tx, run.config.seed, run.mesh)
    ckpts = checkpoint.Checkpoints(workdir)
    restored = ckpts.restore(state, which=which)
    ckpts.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no {which} checkpoint to evaluate; train first")
    return run, restored[0]


def evaluate(config, workdir, which="best", test=False):
    run, state = restore_for_eval(config, workdir, which)
    results = test_state(run, state) if test else evaluate_state(run, state)
    source = (f"export {run.config.init.export_dir}" if which == "export" else
              f"{which} checkpoint (step {int(state.step)})")
    what = f"{'13-view test' if test else 'single-pass val'} of the {source}"
    _final_table(run, results, what)
    return results


def export(config, workdir, which="best", out_dir=None):
    run, state = restore_for_eval(config, workdir, which)
    out = out_dir or str(epath.Path(workdir) / "export")
    checkpoint.export(out, jax.device_get(_variables(state)), run.config.to_dict(),
                      part=run.config.export.part)
    log.info("Exported the %s checkpoint (step %d, part %s) to %s", which, int(state.step),
                 run.config.export.part, out)
    return out
