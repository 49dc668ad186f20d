"""Evaluation of a model and the `--mode eval | test | export` entry points.

- `make_validator(run)`: single-pass full-resolution validation of every `config.eval.datasets`
  split (the reference's training-time val), jitted once per run;
- `vote_test(run, variables)`: the reference's test, 13 views x all grid-sampling fragments with
  softmax votes, at full resolution;
- `evaluate` / `export`: restore a checkpoint of the work directory into the train state's abstract
  shapes (no train shard is opened, nothing is initialised), or take the export at
  config.init.export_dir with its own model settings (`--checkpoint=export`), and validate, test or
  export it.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from ppt_jax import labels
from ppt_jax.data import pipeline
from ppt_jax.train import checkpoint, metrics, optim, setup, sharding
from ppt_jax.train import step as step_lib

log = logging.getLogger(__name__)

# The optimizer's state has the same structure for every schedule length; restoring a checkpoint for
# evaluation builds it for this one (the schedule itself is never used).
_ANY_SCHEDULE_LENGTH = 2


def variables_of(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def eval_spec(run, what="eval"):
    """Capacities that fit every row of single-pass validation ("eval": `setup.eval_crops`) or of
    test-time voting ("test": `setup.test_crops`), measured once per work directory. Those rows are all
    the rows that pass will see, so their sizes are not scaled up to the budget."""
    cfg = run.config
    crops = {"eval": setup.eval_crops, "test": setup.test_crops}[what]
    stats = setup.level_stats(run.workdir, what, lambda: crops(cfg))
    spec = setup.hierarchy_spec(cfg, cfg.data.eval_num_sites, stats, scale_to_budget=False)
    setup.log_padding(spec, stats, what)
    return spec


def make_validator(run):
    """validate(variables) -> {dataset: metrics.summarize(...)} over the val splits."""
    cfg = run.config
    eval_step = step_lib.make_eval_step(run.model, eval_spec(run), len(run.conditions),
                                        run.num_classes, run.mesh)

    def validate(variables):
        results = {}
        for name in cfg.eval.datasets:
            conf = jax.device_put(
                jnp.zeros((len(run.conditions), run.num_classes, run.num_classes), jnp.int32),
                sharding.replicated(run.mesh))
            for batch in pipeline.eval_dataset(cfg.eval.val_dirs[name], name, cfg.data,
                                           jax.process_index(), jax.process_count()):
                conf = eval_step(variables, conf, run.device_batch(batch, pipeline.EVAL_KEYS))
            d = run.conditions.index(name)
            results[name] = metrics.summarize(conf[d], labels.CLASS_NAMES[name])
        return results

    return validate


def vote_test(run, variables):
    """13 views x all GridSample fragments, softmax votes per stored site, full resolution."""
    if jax.process_count() > 1:
        raise NotImplementedError("--mode test runs on one process (voting gathers whole scenes)")
    cfg = run.config
    vote = step_lib.make_vote_step(run.model, eval_spec(run, "test"), run.mesh)
    keys = (*pipeline.EVAL_KEYS[:5], "index")
    results = {}
    for name in cfg.eval.datasets:
        conf = np.zeros((run.num_classes, run.num_classes), np.int64)
        for scene in pipeline.fragment_dataset(cfg.eval.val_dirs[name], name, cfg.data):
            votes = jnp.zeros((_bucket(scene["num_sites"]), run.num_classes), jnp.float32)
            dropped = 0
            for batch in scene["batches"]:
                votes, d = vote(variables, votes, run.device_batch(batch, keys))
                dropped = dropped + d
            if int(dropped):
                raise ValueError(
                    f"{name} scene {scene['scene']}: its test-time views need {int(dropped)} more sites or "
                    f"pairs than the capacities measured on them ({run.workdir}/level_sizes_test.json): "
                    f"the validation data changed since; delete that file")
            pred = np.asarray(jnp.argmax(votes[:scene["num_sites"]], -1))[scene["inverse"]]
            conf += np.asarray(metrics.confusion(pred[None], scene["origin_segment"][None],
                                                 np.array([0]), 1, run.num_classes)[0])
        results[name] = metrics.summarize(conf, labels.CLASS_NAMES[name])
    return results


def _bucket(n):
    """Vote-table length: the next power of two (a handful of small scatter programs for all scene sizes)."""
    return 1 << max(10, int(np.ceil(np.log2(max(n, 1)))))


def final_table(run, results, what):
    """Print (process 0) and write `<workdir>/results.txt`: the per-dataset table of `results`."""
    note = run.text_info.get("note") or f"text encoder: {run.text_info.get('used')}"
    source = "synthetic data" if run.synthetic else "shards"
    table = (f"PPT per-dataset results {what} ({source}; {note})\n"
             + metrics.format_table(results))
    if jax.process_index() == 0:
        (epath.Path(run.workdir) / "results.txt").write_text(table + "\n")
        print(table, flush=True)
    return table


def with_export_model(config):
    """The config with the model, text and `setup.EXPORT_SETTINGS` of config.init.export_dir
    (`--checkpoint=export`): the export's weights with the table and inputs they were made for."""
    if not config.init.export_dir:
        raise ValueError("--checkpoint=export evaluates config.init.export_dir: set it")
    _, meta = checkpoint.load_export(config.init.export_dir)
    if meta["part"] != "full":
        raise ValueError(f"config.init.export_dir {config.init.export_dir}: a '{meta['part']}' export "
                         f"has no head to evaluate (fine-tune it first)")
    saved = ml_collections.ConfigDict(meta["config"])
    config = config.copy_and_resolve_references()
    config.unlock()
    config.model, config.text = saved.model, saved.text
    for section, name in setup.EXPORT_SETTINGS:
        config[section][name] = setup.export_setting(saved, section, name)
    return config


def restore(config, workdir, which, splits=("val",)):
    """(run, train state) of the work directory's `which` checkpoint ("best" | "latest"), or of the
    export at config.init.export_dir ("export"); the `splits` that must exist (no train split:
    evaluation reads none)."""
    if which == "export":
        config = with_export_model(config)
    run = setup.prepare(config, workdir, splits)
    tx, _ = optim.make_optimizer(run.config.optim, _ANY_SCHEDULE_LENGTH)
    if which == "export":
        variables, _ = setup.init_from_export(
            run, setup.init_variables(run.model, run.config, run.config.seed))
        return run, setup.new_state(variables, tx, run.config.seed, run.mesh)
    ckpts = checkpoint.Checkpoints(workdir)
    try:
        restored = ckpts.restore(setup.abstract_state(run, tx), which=which)
    finally:
        ckpts.close()
    if restored is None:
        raise FileNotFoundError(f"{workdir}: no {which} checkpoint to evaluate; train first")
    return run, restored[0]


def evaluate(config, workdir, which="best", test=False):
    """`--mode eval` (single pass) or `--mode test` (13-view voting) of a checkpoint."""
    run, state = restore(config, workdir, which)
    variables = variables_of(state)
    results = vote_test(run, variables) if test else make_validator(run)(variables)
    source = (f"export {run.config.init.export_dir}" if which == "export" else
              f"{which} checkpoint (step {int(state.step)})")
    what = f"{'13-view test' if test else 'single-pass val'} of the {source}"
    final_table(run, results, what)
    return results


def export(config, workdir, which="best", out_dir=None):
    """`--mode export`: the checkpoint's model variables + config JSON (config.export.part)."""
    run, state = restore(config, workdir, which, splits=())
    out = out_dir or str(epath.Path(workdir) / "export")
    checkpoint.export(out, jax.device_get(variables_of(state)), run.config.to_dict(),
                      part=run.config.export.part)
    log.info("Exported the %s checkpoint (step %d, part %s) to %s", which, int(state.step),
             run.config.export.part, out)
    return out
