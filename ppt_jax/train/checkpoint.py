"""Checkpoints with Orbax: resume exactly, keep the best, export weights for fine-tuning/inference.

Layout in the work directory:
  checkpoints/<step>/   periodic saves (keep-N): the whole train state + a JSON of host-side state
                        (data position, best mIoU so far); restoring them continues the run bit-exactly.
  best/<step>/          the best-by-mIoU save (keep 1), same content.
  export/               `export()`: params (+ batch_stats) alone in a plain Orbax checkpoint and
                        `config.json`, what `finetune.py` and the inference tool load.
The train state is any pytree of arrays (params, optimizer state, batch_stats, step, RNG key data);
restoring into a template keeps the template's shardings.
"""

import json
import os
import signal

import jax
import orbax.checkpoint as ocp

EXPORT_CONFIG = "config.json"
EXPORT_VARIABLES = "variables"
EXPORT_PARTS = ("full", "backbone")


def _abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
    """Periodic (keep-N) and best-by-mIoU checkpoints of one run."""

    def __init__(self, workdir, keep=3):
        workdir = os.path.abspath(workdir)
        self.periodic = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 best_fn=lambda m: m["mIoU"], best_mode="max"))

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save(self, step, state, meta):
        """Periodic save (replaces an existing save of the same step)."""
        if step in self.periodic.all_steps():
            return
        self.periodic.save(step, args=self._args(state, meta), force=True)
        self.periodic.wait_until_finished()

    def save_best(self, step, state, meta, miou):
        """Keep this state if its mIoU beats the stored best."""
        if step in self.best.all_steps():
            return
        self.best.save(step, args=self._args(state, meta), metrics={"mIoU": float(miou)}, force=True)
        self.best.wait_until_finished()

    def restore(self, template, which="latest"):
        """(state, meta) of the latest periodic (or the best) save, or None when there is none."""
        manager = self.periodic if which == "latest" else self.best
        step = manager.latest_step() if which == "latest" else manager.best_step()
        if step is None:
            return None
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)), meta=ocp.args.JsonRestore()))
        return out.state, out.meta

    def close(self):
        self.periodic.close()
        self.best.close()


def export(out_dir, variables, config_dict, part="full"):
    """Write model variables ({'params', 'batch_stats'?}) and the config JSON for later loading.

    part='backbone' keeps only the `backbone` subtree of each collection (the reference's
    backbone-only weights for fine-tuning with a new head).
    """
    if part not in EXPORT_PARTS:
        raise ValueError(f"export part must be one of {EXPORT_PARTS}, got {part!r}")
    if part == "backbone":
        missing = [k for k, v in variables.items() if "backbone" not in v]
        if missing:
            raise ValueError(f"export part='backbone': collections {missing} have no 'backbone' "
                             f"subtree (top-level keys: {[list(variables[k]) for k in missing]})")
        variables = {k: {"backbone": v["backbone"]} for k, v in variables.items()}
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, EXPORT_VARIABLES), variables, force=True)
    with open(os.path.join(out_dir, EXPORT_CONFIG), "w") as f:
        json.dump({"part": part, "config": config_dict}, f, indent=1, default=str)
    return out_dir


def load_export(export_dir):
    """(variables, {'part', 'config'}) written by `export` (numpy/jax arrays on the default device)."""
    cfg_path = os.path.join(export_dir, EXPORT_CONFIG)
    var_path = os.path.join(os.path.abspath(export_dir), EXPORT_VARIABLES)
    if not (os.path.exists(cfg_path) and os.path.isdir(var_path)):
        raise FileNotFoundError(f"{export_dir} is not an exported model: expected {EXPORT_CONFIG} and "
                                f"{EXPORT_VARIABLES}/ written by `--mode export`")
    with open(cfg_path) as f:
        meta = json.load(f)
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(var_path)
    return variables, meta


class Preemption:
    """SIGTERM -> save after the current step and exit; `reached(step)` is polled after every step.

    One process: a SIGTERM handler sets a flag. Several processes: a checkpoint save is collective,
    so all of them must stop at the same step even when only some got the signal. JAX's preemption
    service (started by `jax.distributed.initialize`, it catches SIGTERM itself) spreads the notice
    and names that step: `multihost_utils.reached_preemption_sync_point`.
    """

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self.requested = False
        if not self.multi_process:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step):
        """Whether to save and stop after `step`; call it after every step, on every process."""
        if self.multi_process:
            from jax.experimental import multihost_utils
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if not self.multi_process:
            signal.signal(signal.SIGTERM, self._previous)
