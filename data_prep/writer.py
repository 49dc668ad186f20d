"""The one shard writer every dataset command uses: raw per-scene points -> voxelized TFRecord shards.

Shard assignment is fixed before any work starts: the scene ids are sorted and cut into consecutive
groups of `scenes_per_shard`; shard i holds group i (minus skipped scenes). A shard is written (under a
temporary name, then renamed) as soon as its scenes are done, followed by a small record in
`.progress/` naming its scenes, skips and checksum. Because each scene's bytes are a pure function of
(load_fn, scene id, settings) and the grouping does not depend on timing or `workers`, a run that is
killed and re-run produces byte-identical shards to one clean run, and finished shards are never redone.
A rerun does retry the scenes an earlier run skipped (the user may have fixed their files): it loads only
those and rewrites their shards, reading the other scenes' records back from the shard.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import threading
import time

import numpy as np
import tensorflow as tf
import tqdm

from ppt_jax import files, labels
from ppt_jax.data import schema

PROGRESS_DIR = ".progress"
RAW_FIELDS = {  # name -> trailing shape of the raw per-point arrays handed over by load_fn
    "coord": (3,), "color": (3,), "normal": (3,), "segment": (), "instance": (),
}


class SceneError(Exception):
    """A broken input scene: `path` names the file at fault, `reason` says what is wrong."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass
class Summary:
    dataset: str
    split: str
    split_dir: str
    num_scenes: int = 0
    num_written: int = 0
    num_points: int = 0
    num_sites: int = 0
    num_shards: int = 0
    shards_reused: int = 0
    scenes_retried: int = 0  # scenes skipped by an earlier run and tried again
    skipped: list = dataclasses.field(default_factory=list)  # [{"scene", "file", "reason"}]
    notes: list = dataclasses.field(default_factory=list)  # [{"scene", "note"}]: repairs made
    seconds: float = 0.0

    @property
    def ok(self):
        return not self.skipped

    @classmethod
    def of(cls, manifest, split_dir, **run):
        """The summary of a split from its manifest; `run` sets what only the run knows (seconds...)."""
        return cls(manifest["dataset"], manifest["split"], split_dir,
                   num_scenes=manifest["num_scenes"] + len(manifest["skipped"]),
                   num_written=manifest["num_scenes"], num_points=manifest["num_points"],
                   num_sites=manifest["num_sites"], num_shards=len(manifest["shards"]),
                   skipped=manifest["skipped"], notes=manifest["notes"], **run)

    def line(self):
        retried = f", {self.scenes_retried} skipped scenes retried" if self.scenes_retried else ""
        return (f"{self.dataset}/{self.split}: {self.num_written}/{self.num_scenes} scenes in "
                f"{self.num_shards} shards ({self.shards_reused} reused{retried}), {self.num_points:,} points -> "
                f"{self.num_sites:,} sites, {len(self.skipped)} skipped, {self.seconds:.1f} s "
                f"-> {self.split_dir}")


def validate(raw, num_classes, where, grid_size=0.01):
    """Check a raw scene dict; raise SceneError(where, reason) naming the first problem found."""
    where = raw.get("path", where)
    missing = [k for k in RAW_FIELDS if k not in raw]
    if missing:
        raise SceneError(where, f"missing fields {missing}")
    num = len(raw["coord"])
    for name, shape in RAW_FIELDS.items():
        if np.shape(raw[name]) != (num, *shape):
            raise SceneError(where, f"field {name} has shape {np.shape(raw[name])}, "
                                    f"expected {(num, *shape)}")
    if num == 0:
        raise SceneError(where, "empty scene (no points)")
    for name in ("coord", "normal"):
        bad = int(np.sum(~np.isfinite(raw[name]).all(axis=1)))
        if bad:
            raise SceneError(where, f"{bad} of {num} points have non-finite {name} (NaN or inf)")
    extent = np.ptp(np.asarray(raw["coord"], np.float64), axis=0)
    if np.any(extent / grid_size >= schema.GRID_BOUND - 1):
        raise SceneError(where, f"scene extent {extent.round(2).tolist()} m exceeds {schema.GRID_BOUND - 1} "
                                f"voxels of {grid_size} m")
    color = np.asarray(raw["color"])
    if color.dtype != np.uint8 and (color.min() < 0 or color.max() > 255):
        raise SceneError(where, f"color values outside 0..255: [{color.min()}, {color.max()}]")
    seg = np.asarray(raw["segment"])
    if seg.min() < -1 or seg.max() >= num_classes:
        raise SceneError(where, f"labels out of range: found [{seg.min()}, {seg.max()}], valid -1.."
                                f"{num_classes - 1} ({num_classes} classes)")
    if np.asarray(raw["instance"]).min() < -1:
        raise SceneError(where, f"instance ids below -1: {np.asarray(raw['instance']).min()}")


def voxelize(raw, grid_size, keep_full_res):
    """Keep the first point (lowest input index) of every occupied `grid_size` voxel, in grid-key order.

    First-point dedup is the reference's Structured3D preprocessing (np.unique return_index). Grid
    coordinates are floor((coord - coord.min(0)) / grid_size) computed in float64, so they do not depend
    on float32 rounding of the subtraction. With `keep_full_res` the result also carries
    `origin_segment` (every input point's label) and `inverse` (every input point's site index).
    """
    coord = np.asarray(raw["coord"], np.float32)
    grid = np.floor((coord.astype(np.float64) - coord.min(0)) / grid_size).astype(np.int64)
    key = schema.grid_key(grid)  # ValueError beyond GRID_BOUND (validate reports it per scene)
    order = np.argsort(key, kind="stable")
    starts = np.ones(len(order), bool)
    starts[1:] = key[order[1:]] != key[order[:-1]]
    sites = order[starts]
    out = {
        "coord": coord[sites],
        "color": np.asarray(raw["color"]).astype(np.uint8)[sites],
        "normal": np.asarray(raw["normal"], np.float32)[sites],
        "grid_coord": grid[sites].astype(np.int32),
        "segment": np.asarray(raw["segment"], np.int32)[sites],
        "instance": np.asarray(raw["instance"], np.int32)[sites],
    }
    if keep_full_res:
        inverse = np.empty(len(order), np.int32)
        inverse[order] = np.cumsum(starts) - 1
        out["inverse"] = inverse
        out["origin_segment"] = np.asarray(raw["segment"], np.int32)
    return out


def process_scene(task):
    """Load, validate, voxelize and encode one scene: the unit of work of any runner (local or Beam).

    task = (load_fn, scene_id, dataset, grid_size, keep_full_res, num_classes). Returns {"scene",
    "record" (Example bytes), "num_points", "num_sites", "notes"}, or {"scene", "file", "reason"} for a
    broken scene. Pure in its inputs; picklable, so it runs in spawned workers.
    """
    load_fn, scene_id, dataset, grid_size, keep_full_res, num_classes = task
    try:
        raw = load_fn(scene_id)
        validate(raw, num_classes, scene_id, grid_size)
        vox = voxelize(raw, grid_size, keep_full_res)
    except SceneError as err:
        return {"scene": scene_id, "file": err.path, "reason": err.reason}
    except Exception as err:  # a bug, not bad input: stop the run, but say which scene
        raise RuntimeError(f"{dataset} scene {scene_id}: unexpected {type(err).__name__}: {err}") from err
    record = schema.encode_scene({**vox, "dataset": dataset, "scene": scene_id,
                                  "grid_size": grid_size})
    return {"scene": scene_id, "record": record, "num_points": len(raw["coord"]),
            "num_sites": len(vox["coord"]), "notes": list(raw.get("notes", ()))}


def _exit_with_parent(parent_pid, interval=0.5):
    """Worker initializer: end this worker as soon as the process that started it is gone.

    A parent killed with SIGKILL cannot stop its pool, and a spawned worker holds both ends of its
    task queue, so it would wait forever (re-parented to PID 1). Polling getppid() from a daemon
    thread ends it within `interval`; the resource tracker then sees its last client gone and exits.
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run(tasks, workers):
    """Results of `process_scene` in task order; at most 2 * workers scenes in flight or buffered.

    A ProcessPoolExecutor (not multiprocessing.Pool) so that a worker killed by the OS (e.g. out of
    memory) raises BrokenProcessPool instead of hanging the run; its workers die with the run.
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(process_scene, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        pending = collections.deque()
        try:
            for task in tasks:
                pending.append(pool.submit(process_scene, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_text(obj):
    """The text of every JSON file the writers make (manifest, progress records)."""
    return json.dumps(obj, indent=1)


def _write_json(path, obj):
    files.write_text(path, json_text(obj))


def _finished(split_dir, name, fingerprint):
    """The progress record of a finished shard, or None when the shard must be (re)written."""
    record_path = os.path.join(split_dir, PROGRESS_DIR, name + ".json")
    shard_path = os.path.join(split_dir, name)
    if not (os.path.exists(record_path) and os.path.exists(shard_path)):
        return None
    with open(record_path) as f:
        record = json.load(f)
    if record.get("fingerprint") != fingerprint or record.get("sha256") != _sha256(shard_path):
        return None
    return record


def _kept_results(split_dir, name, record):
    """{scene: process_scene result} of the scenes a finished shard holds, read back from the shard.

    None when the shard does not hold what its record lists (then the whole shard is redone).
    """
    encoded = list(tf.data.TFRecordDataset(os.path.join(split_dir, name)).as_numpy_iterator())
    if len(encoded) != len(record["scenes"]):
        return None
    return {s["scene"]: {**s, "record": data,
                         "notes": [n["note"] for n in record["notes"] if n["scene"] == s["scene"]]}
            for s, data in zip(record["scenes"], encoded)}


def write_records(path, results):
    """Write the records of `results` (`process_scene` outputs, in shard order) as one TFRecord file."""
    with tf.io.TFRecordWriter(path) as w:
        for res in results:
            if "record" in res:
                w.write(res["record"])


def shard_record(fingerprint, path, results):
    """The progress record of the shard file at `path` written from `results`."""
    return {
        "fingerprint": fingerprint,
        "sha256": _sha256(path),
        "bytes": os.path.getsize(path),
        "scenes": [{k: r[k] for k in ("scene", "num_points", "num_sites")}
                   for r in results if "record" in r],
        "skipped": [r for r in results if "record" not in r],
        "notes": [{"scene": r["scene"], "note": n} for r in results for n in r.get("notes", ())],
    }


def _write_shard(split_dir, name, fingerprint, results):
    shard_path = os.path.join(split_dir, name)
    with files.atomic_path(shard_path) as tmp:
        write_records(os.fspath(tmp), results)
    record = shard_record(fingerprint, shard_path, results)
    _write_json(os.path.join(split_dir, PROGRESS_DIR, name + ".json"), record)
    return record


def is_stale(name, expected, in_progress_dir):
    """Whether file `name` of a split folder (or of its PROGRESS_DIR) is a temporary or a shard of an
    earlier run with other settings (a different shard count), given the `expected` shard names."""
    base = name[:-len(".json")] if in_progress_dir and name.endswith(".json") else name
    return name.endswith(".tmp") or (name.startswith("shard-") and base not in expected)


def _clean_stale(split_dir, expected):
    for folder in (split_dir, os.path.join(split_dir, PROGRESS_DIR)):
        for name in os.listdir(folder):
            if is_stale(name, expected, folder != split_dir):
                os.remove(os.path.join(folder, name))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A split's shards, fixed before any work: shard i holds `groups[i]` (sorted scene ids)."""
    settings: dict  # recorded in the manifest and in every shard's fingerprint
    extra: dict
    scenes_per_shard: int
    groups: list
    names: list
    fingerprints: list

    def task(self, load_fn, scene_id):
        """The `process_scene` argument for one scene."""
        s = self.settings
        return (load_fn, scene_id, s["dataset"], s["grid_size"], s["keep_full_res"], len(s["label_names"]))

    def manifest(self, records):
        """manifest.json of the split from the progress records of all its shards, in shard order."""
        scenes, shards, skipped, notes = [], [], [], []
        for name, record in zip(self.names, records):
            scenes += [{**s, "shard": name} for s in record["scenes"]]
            skipped += record["skipped"]
            notes += record["notes"]
            shards.append({"file": name, "sha256": record["sha256"], "bytes": record["bytes"],
                           "num_scenes": len(record["scenes"])})
        return {**self.settings, "num_scenes": len(scenes),
                "num_points": sum(s["num_points"] for s in scenes),
                "num_sites": sum(s["num_sites"] for s in scenes),
                "scenes_per_shard": self.scenes_per_shard, "shards": shards, "scenes": scenes,
                "skipped": skipped, "notes": notes, **self.extra}


def plan_split(dataset, split, scene_ids, grid_size=0.01, keep_full_res=False, scenes_per_shard=16,
               label_names=None, manifest_extra=None):
    """Check the arguments of `write_split` and fix its shards; see there."""
    if grid_size <= 0:
        raise ValueError(f"grid_size must be > 0, got {grid_size}")
    if scenes_per_shard < 1:
        raise ValueError(f"scenes_per_shard must be >= 1, got {scenes_per_shard}")
    if label_names is None:
        if dataset not in labels.CLASS_NAMES:
            raise ValueError(f"dataset {dataset!r} has no label list in ppt_jax.labels; pass label_names")
        label_names = labels.CLASS_NAMES[dataset]
    if not all(isinstance(s, str) for s in scene_ids):
        raise ValueError("scene_ids must be strings")
    if len(set(scene_ids)) != len(scene_ids):
        dup = sorted({s for s in scene_ids if scene_ids.count(s) > 1})
        raise ValueError(f"duplicate scene ids: {dup[:5]}")
    scene_ids = sorted(scene_ids)
    groups = [scene_ids[i:i + scenes_per_shard] for i in range(0, len(scene_ids), scenes_per_shard)]
    settings = {"schema_version": schema.SCHEMA_VERSION, "dataset": dataset, "split": split,
                "grid_size": grid_size, "keep_full_res": keep_full_res, "label_names": list(label_names)}
    extra = dict(manifest_extra or {})
    return Plan(settings, extra, scenes_per_shard, groups,
                names=[schema.SHARD_PATTERN.format(index=i, count=len(groups)) for i in range(len(groups))],
                fingerprints=[json.dumps({**settings, "extra": extra, "scenes": g}, sort_keys=True)
                              for g in groups])


def write_split(out_dir, dataset, split, scene_ids, load_fn, grid_size=0.01, keep_full_res=False,
                workers=1, scenes_per_shard=16, label_names=None, manifest_extra=None,
                overwrite=False, progress=True):
    """Write `out_dir/<split>/shard-*.tfrecord` + `manifest.json` for `scene_ids`; return a Summary.

    `load_fn(scene_id) -> raw dict` (see RAW_FIELDS; optional keys: "path" names the source file in
    error messages, "notes" lists repairs made to the input, kept in the manifest) must be picklable
    (a module-level function or functools.partial) when workers > 1.
    `label_names` default to `labels.CLASS_NAMES[dataset]`; `manifest_extra` is merged into the manifest
    (e.g. {"synthetic": True}) and, like every setting here, into the fingerprint that decides whether
    a finished shard can be reused (the raw data cannot be fingerprinted: use `overwrite` when it
    changes). Scenes whose load_fn raises SceneError, or that fail validation, are
    skipped and listed in the summary and the manifest, and tried again by the next run; any other
    exception propagates.
    """
    start = time.time()
    plan = plan_split(dataset, split, scene_ids, grid_size, keep_full_res, scenes_per_shard, label_names,
                      manifest_extra)
    groups, names, fingerprints = plan.groups, plan.names, plan.fingerprints
    split_dir = os.path.join(out_dir, split)
    os.makedirs(os.path.join(split_dir, PROGRESS_DIR), exist_ok=True)
    _clean_stale(split_dir, set(names))
    manifest_path = os.path.join(split_dir, schema.MANIFEST_NAME)
    if os.path.exists(manifest_path):  # stale until this run finishes
        os.remove(manifest_path)

    records = [None if overwrite else _finished(split_dir, n, f) for n, f in zip(names, fingerprints)]
    # A finished shard with skipped scenes is redone for those scenes only (their input may have been
    # fixed since); its other scenes are read back from the shard.
    kept = {i: _kept_results(split_dir, names[i], r) or {} for i, r in enumerate(records)
            if r is not None and r["skipped"]}
    todo = [i for i, r in enumerate(records) if r is None or i in kept]
    tasks = [plan.task(load_fn, s) for i in todo for s in groups[i] if s not in kept.get(i, ())]
    retried = sum(len(records[i]["skipped"]) for i in kept)

    bar = tqdm.tqdm(total=len(tasks), desc=f"{dataset}/{split}", unit="scene", disable=not progress)
    results = _run(tasks, workers)
    try:
        for i in todo:
            done = []
            for scene in groups[i]:
                if scene in kept.get(i, ()):
                    done.append(kept[i][scene])
                else:
                    done.append(next(results))
                    bar.update(1)
            records[i] = _write_shard(split_dir, names[i], fingerprints[i], done)
    finally:
        results.close()  # stops the workers at once when interrupted
        bar.close()

    manifest = plan.manifest(records)
    _write_json(manifest_path, manifest)
    return Summary.of(manifest, split_dir, shards_reused=len(groups) - len(todo), scenes_retried=retried,
                      seconds=time.time() - start)
