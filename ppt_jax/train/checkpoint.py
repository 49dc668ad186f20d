"""Checkpoints with Orbax: resume exactly, keep the best, export weights for fine-tuning/inference.

Layout in the work directory (any `etils.epath` location: a local folder, gs://...):
  checkpoints/<step>/   periodic saves (keep-N): the whole train state + a JSON of host-side state
                        (data position, best mIoU so far, the run's config); restoring them continues
                        the run bit-exactly.
  best/<step>/          the best-by-mIoU save (keep 1), same content.
  rejected/             checkpoints that failed their integrity check on restore, moved aside (kept
                        for inspection, never restored again).
  export/               `export()`: params (+ batch_stats) alone in a plain Orbax checkpoint and
                        `config.json`, what `finetune.py` and the inference tool load.
The train state is any pytree of arrays (params, optimizer state, batch_stats, step, RNG key data);
restoring into a template keeps the template's shardings.

Integrity: every save records a sha256 of each array (bytes, dtype, shape) in the checkpoint's JSON;
a restore recomputes them and checks that floating arrays are finite. A checkpoint that cannot be
read or fails a check is named with its reason in one message, moved to `rejected/`, and the newest
good one is used instead (orbax alone restores flipped bytes silently, and a truncated file fails
deep inside tensorstore).
"""

import hashlib
import json
import logging
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

EXPORT_CONFIG = "config.json"
EXPORT_VARIABLES = "variables"
EXPORT_PARTS = ("full", "backbone")
INTEGRITY = "integrity"
REJECTED = "rejected"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason; the message names the checkpoint."""


def absolute(path):
    """`path` as an absolute epath.Path (a gs:// path is already absolute; Orbax needs absolute)."""
    path = epath.Path(path)
    return path if path.is_absolute() else path.resolve()


def _abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _host_array(leaf):
    """One full copy of a leaf on this host (the train state is replicated on every device)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(leaf)


def array_records(tree):
    """{key path: {shape, dtype, sha256 of (dtype, shape, bytes)}} of every leaf."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = _host_array(leaf)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())          # C order whatever the layout
        out[jax.tree_util.keystr(path)] = {"shape": list(a.shape), "dtype": a.dtype.str,
                                            "sha256": h.hexdigest()}
    return out


def check_state(state, records):
    """The first problem of a restored state ('' if none): a checksum mismatch with `records`
    (`array_records` at save time; None: not checked) or a non-finite floating array."""
    if records is not None:
        found = array_records(state)
        bad = [k for k in found if found[k]["sha256"] != records.get(k, {}).get("sha256")]
        if bad:
            return f"{len(bad)} array(s) differ from their checksum at save time, first {bad[0]}"
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        a = _host_array(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return f"array {jax.tree_util.keystr(path)} holds NaN/inf"
    return ""


def _reason(err):
    """One line for an exception from deep inside Orbax/tensorstore."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


# Settings a resumed run may change freely: how the run is driven, logged, evaluated, not what it
# trains. A prefix ending in "." covers a whole section.
RUN_CONTROL = ("name", "train.log_every", "train.eval_every", "train.checkpoint_every",
               "train.keep_checkpoints", "train.stop_at_step", "train.on_nonfinite",
               "train.allow_resume_changes", "eval.", "text.cache_dir", "text.allow_download",
               "data.num_parallel_calls", "data.prefetch", "data.eval_batch_size",
               "data.eval_num_sites", "data.eval_num_points", "data.test_batch_size",
               "data.verify_sha256", "export.", "init.", "synthetic.workers", "sparse.on_overflow")


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _covered(key, prefixes):
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
               for p in prefixes if p)


def config_record(config_dict):
    """The run's config as stored with its checkpoints (JSON types: tuples become lists)."""
    return json.loads(json.dumps(config_dict, default=str))


def config_changes(saved, current, allowed=()):
    """['key: saved -> current', ...] for the settings outside RUN_CONTROL and `allowed` (dotted keys
    or section prefixes) that differ between a checkpoint's config and this run's."""
    saved, current = _flat(config_record(saved)), _flat(config_record(current))
    return [f"{k}: {saved.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}"
            for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k) and not _covered(k, RUN_CONTROL + tuple(allowed))]


def resume_check(config_dict, allowed=()):
    """A `Checkpoints.restore(check_meta=...)` that refuses a checkpoint saved with other settings."""
    def check(meta):
        if "config" not in meta:
            log.warning("the checkpoint records no config (written by an older version): "
                        "settings not compared")
            return
        changes = config_changes(meta["config"], config_dict, allowed)
        if changes:
            raise CheckpointError(
                f"the work directory's checkpoint was trained with other settings ({'; '.join(changes)}"
                f"); these change the model, the data or the schedule. Resume with the saved "
                f"settings, use another --workdir, or accept the change explicitly with "
                f"--config.train.allow_resume_changes={','.join(c.split(':')[0] for c in changes)}")
    return check


def _layout_problem(template, arrays):
    """'' if `template` has the recorded arrays' paths, shapes and dtypes, else the first difference."""
    want = {jax.tree_util.keystr(p): (list(np.shape(x)), np.dtype(x.dtype).str)
            for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}
    have = {k: (v["shape"], v["dtype"]) for k, v in arrays.items()}
    only_saved, only_here = sorted(set(have) - set(want)), sorted(set(want) - set(have))
    if only_saved or only_here:
        return (f"its arrays do not match this configuration's (only in the checkpoint: "
                f"{only_saved[:2]}, only in this model: {only_here[:2]})")
    for k in want:
        if want[k] != have[k]:
            return (f"array {k} is stored with shape/dtype {tuple(have[k][0])}/{have[k][1]}, this "
                    f"configuration builds {tuple(want[k][0])}/{want[k][1]}")
    return ""


class Checkpoints:
    """Periodic (keep-N) and best-by-mIoU checkpoints of one run, checked on restore."""

    def __init__(self, workdir, keep=3):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least one checkpoint must be kept")
        self.workdir = absolute(workdir)
        self.periodic = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            self.workdir / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 best_fn=lambda m: m["mIoU"], best_mode="max"))

    @staticmethod
    def _args(state, meta):
        meta = dict(meta, **{INTEGRITY: {"format": 1, "arrays": array_records(state)}})
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

    def restore(self, template, which="latest", check_meta=None):
        """(state, meta) of the newest intact periodic save (or of the best save), None if none.

        `check_meta(meta)` may raise for a checkpoint of another run before any array is read
        (the config comparison); that checkpoint is left in place. A damaged latest checkpoint is
        moved to `rejected/` and the next older one is tried; a damaged best one is an error.
        """
        manager = self.periodic if which == "latest" else self.best
        steps = (sorted(manager.all_steps(), reverse=True) if which == "latest"
                 else [s for s in [manager.best_step()] if s is not None])
        rejected = []
        for step in steps:
            name = f"{manager.directory}/{step}"
            try:
                out = self._restore_step(manager, step, template, check_meta, name)
            except _Damaged as err:
                if which != "latest":
                    raise CheckpointError(f"checkpoint {name} is damaged: {err}") from None
                moved = self._set_aside(manager, step)
                log.error("CHECKPOINT %s IS DAMAGED: %s. Moved it to %s; trying the previous one.",
                          name, err, moved)
                rejected.append(name)
                continue
            if rejected:
                log.warning("Resuming from %s, the newest intact checkpoint (rejected: %s)", name,
                            ", ".join(rejected))
            return out
        if rejected:
            log.warning("No intact checkpoint left (rejected: %s): starting from step 0",
                        ", ".join(rejected))
        return None

    @staticmethod
    def _restore_step(manager, step, template, check_meta, name):
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # noqa: BLE001 -- any failure to read it is damage, reported
            raise _Damaged(f"its metadata is unreadable ({_reason(err)})") from None
        if not isinstance(meta, dict):
            raise _Damaged(f"its metadata is {type(meta).__name__}, not a JSON object")
        if check_meta is not None:
            check_meta(meta)
        record = meta.pop(INTEGRITY, None)
        if record is not None:
            problem = _layout_problem(template, record["arrays"])
            if problem:
                raise CheckpointError(f"checkpoint {name} does not fit this configuration: {problem}")
        else:
            log.warning("checkpoint %s has no integrity record (written by an older version): "
                        "its arrays are checked for NaN/inf only", name)
        try:
            state = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(template)))).state
        except Exception as err:  # noqa: BLE001
            raise _Damaged(f"its arrays are unreadable ({_reason(err)})") from None
        problem = check_state(state, None if record is None else record["arrays"])
        if problem:
            raise _Damaged(problem)
        return state, meta

    def _set_aside(self, manager, step):
        """Move a damaged step directory to rejected/ (process 0; the others wait for it)."""
        from ppt_jax import distributed

        source = epath.Path(manager.directory) / str(step)
        target = self.workdir / REJECTED / f"{source.parent.name}-{step}"
        n = 1
        while target.exists():
            target, n = self.workdir / REJECTED / f"{source.parent.name}-{step}.{n}", n + 1
        if jax.process_index() == 0:
            _move_tree(source, target)
        distributed.wait_for_all(f"ppt_jax_rejected_{source.parent.name}_{step}")
        manager.reload()
        return target

    def close(self):
        self.periodic.close()
        self.best.close()


def _move_tree(source, target):
    """Move a directory: one rename locally; file by file on object storage (no directories there,
    each object is copied then deleted)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if "://" not in str(source):
        source.rename(target)
        return
    for path in source.iterdir():
        if path.is_dir():
            _move_tree(path, target / path.name)
        else:
            path.copy(target / path.name)
            path.unlink()
    if source.exists():
        source.rmtree()


class _Damaged(Exception):
    """Internal: this checkpoint's files are unreadable or fail their integrity check."""


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
    out_dir = absolute(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out_dir / EXPORT_VARIABLES, variables, force=True)
    (out_dir / EXPORT_CONFIG).write_text(json.dumps({"part": part, "config": config_dict}, indent=1,
                                                    default=str))
    return str(out_dir)


def load_export(export_dir):
    """(variables, {'part', 'config'}) written by `export` (numpy/jax arrays on the default device)."""
    export_dir = absolute(export_dir)
    cfg_path, var_path = export_dir / EXPORT_CONFIG, export_dir / EXPORT_VARIABLES
    if not (cfg_path.exists() and var_path.is_dir()):
        raise FileNotFoundError(f"{export_dir} is not an exported model: expected {EXPORT_CONFIG} and "
                                f"{EXPORT_VARIABLES}/ written by `--mode export`")
    try:
        meta = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
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
