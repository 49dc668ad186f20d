"""The dataset commands on Apache Beam: the same shards, manifest and reports as the local writer.

    python -m data_prep.beam --dataset scannet|s3dis|structured3d|synthetic [the dataset's flags]
        --out DIR [--grid_size 0.01] [--scenes_per_shard 16] [Beam pipeline options, e.g. --runner ...]

The dataset flags and splits come from the local command's own `add_arguments`/`splits`; every other
flag is a Beam pipeline option (an unknown one is an error). All splits run as one job; each is

    shard indices --Reshuffle--> per shard: writer.process_scene for each of its scenes, the shard
      (writer.write_records) and its progress record --ToList--> manifest.json

on the local writer's plan (`writer.plan_split`), so the output folder is byte-identical to a local
run's. The work unit is a shard, so encoded scenes never cross a shuffle. Files are written under a
per-attempt temporary name and renamed onto their fixed one: a retried or repeated work unit rewrites
the same bytes, and the runner keeps one record per shard. Output goes through
`apache_beam.io.filesystems` (gs://, s3://, hdfs://, local); how to run it on Dataflow, Flink or Spark,
and what it costs: data_prep/README.md.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from data_prep import cli, s3dis, scannet, structured3d, synthetic, writer
from ppt_jax.data import schema

DATASETS = {"scannet": scannet, "s3dis": s3dis, "structured3d": structured3d, "synthetic": synthetic}
_RAW = CompressionTypes.UNCOMPRESSED
_SCENES = beam.metrics.Metrics.counter("data_prep", "scenes written")
_SKIPPED = beam.metrics.Metrics.counter("data_prep", "scenes skipped")


def _put(path, write):
    """Write a file through FileSystems: `write(f)` to a temporary name of this attempt, then rename."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with FileSystems.create(tmp, compression_type=_RAW) as f:
        write(f)
    FileSystems.rename([tmp], [path])


def _put_json(path, obj):
    _put(path, lambda f: f.write(writer.json_text(obj).encode()))


def _read_json(path):
    with FileSystems.open(path, compression_type=_RAW) as f:
        return json.load(f)


def _list(split_dir):
    """(name, path, in_progress_dir) of the files in a split folder and in its PROGRESS_DIR."""
    out = []
    for folder, in_progress in ((split_dir, False), (FileSystems.join(split_dir, writer.PROGRESS_DIR), True)):
        for meta in FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list:
            out.append((meta.path.rstrip("/").rsplit("/", 1)[-1], meta.path, in_progress))
    return out


def _prepare(split_dir, plan):
    """What the local writer does before a run: drop temporaries, other runs' shards, the manifest."""
    stale = [path for name, path, in_progress in _list(split_dir)
             if writer.is_stale(name, set(plan.names), in_progress)
             or (name == schema.MANIFEST_NAME and not in_progress)]
    if stale:
        FileSystems.delete(stale)


def _write_shard(index, plan, load_fn, split_dir):
    """Shard `index` of the plan: its scenes through `writer.process_scene`, then the shard file (written
    locally by `writer.write_records`, then copied) and its progress record. Returns (index, record)."""
    name = plan.names[index]
    results = [writer.process_scene(plan.task(load_fn, scene)) for scene in plan.groups[index]]
    written = sum("record" in r for r in results)
    _SCENES.inc(written)
    _SKIPPED.inc(len(results) - written)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, name)
        writer.write_records(local, results)
        record = writer.shard_record(plan.fingerprints[index], local, results)
        with open(local, "rb") as src:
            _put(FileSystems.join(split_dir, name), lambda f: shutil.copyfileobj(src, f, 1 << 20))
    _put_json(FileSystems.join(split_dir, writer.PROGRESS_DIR, name + ".json"), record)
    return index, record


def _write_manifest(records, plan, split_dir):
    """manifest.json from every shard's record, once all are written; temporaries of dead attempts go."""
    records = sorted(records, key=lambda r: r[0])
    if [i for i, _ in records] != list(range(len(plan.names))):
        raise RuntimeError(f"{split_dir}: records for shards {[i for i, _ in records]}, "
                           f"planned {len(plan.names)}")
    leftovers = [path for name, path, _ in _list(split_dir) if name.endswith(".tmp")]
    if leftovers:
        FileSystems.delete(leftovers)
    _put_json(FileSystems.join(split_dir, schema.MANIFEST_NAME), plan.manifest([r for _, r in records]))


def write_split(pipeline, out_dir, dataset, split, scene_ids, load_fn, grid_size=0.01, keep_full_res=False,
                scenes_per_shard=16, label_names=None, manifest_extra=None):
    """Add `writer.write_split`'s work for one split to `pipeline`; returns the split folder.

    Arguments as `writer.write_split` (no workers, overwrite or progress: the runner decides those, and
    a Beam job always writes the whole split).
    """
    plan = writer.plan_split(dataset, split, scene_ids, grid_size, keep_full_res, scenes_per_shard,
                             label_names, manifest_extra)
    return add_split(pipeline, out_dir, plan, load_fn)


def add_split(pipeline, out_dir, plan, load_fn):
    """`write_split` for a checked plan; stale files are removed now, as the local writer does."""
    split_dir = FileSystems.join(out_dir, plan.settings["split"])
    _prepare(split_dir, plan)
    label = f"{plan.settings['dataset']}/{plan.settings['split']}"
    _ = (pipeline
         | f"{label}: shards" >> beam.Create(range(len(plan.groups)))
         | f"{label}: spread" >> beam.Reshuffle()  # one shard per work unit, over all workers
         | f"{label}: write shard" >> beam.Map(_write_shard, plan, load_fn, split_dir)
         | f"{label}: all shards" >> beam.combiners.ToList()
         | f"{label}: manifest" >> beam.Map(_write_manifest, plan, split_dir))
    return split_dir


def _check_pipeline_options(p, beam_args):
    """Refuse what neither this command nor any Beam PipelineOptions knows (a mistyped flag)."""
    known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(known)  # how PipelineOptions itself collects every option
    _, unknown = known.parse_known_args(beam_args)
    if unknown:
        p.error(f"unrecognized arguments (neither data_prep nor Beam options): {' '.join(unknown)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", choices=DATASETS)
    module = DATASETS.get(pre.parse_known_args(argv)[0].dataset)
    p = argparse.ArgumentParser(prog="python -m data_prep.beam", description=__doc__.splitlines()[0],
                                epilog="Other flags are Beam pipeline options (--runner, ...).")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    cli.add_shard_arguments(p)
    if module is not None:
        if module is not synthetic:
            cli.add_raw_argument(p)
        module.add_arguments(p)
    args, beam_args = p.parse_known_args(argv)
    _check_pipeline_options(p, beam_args)
    plans = []
    try:  # every split checked before anything is deleted or written
        for job in module.splits(args):
            out_dir, load_fn = job.pop("out_dir"), job.pop("load_fn")
            plan = writer.plan_split(**job, grid_size=args.grid_size, scenes_per_shard=args.scenes_per_shard)
            plans.append((out_dir, plan, load_fn))
    except ValueError as err:
        p.error(str(err))
    options = PipelineOptions(beam_args)
    start = time.time()
    with beam.Pipeline(options=options) as pipeline:
        split_dirs = [add_split(pipeline, out_dir, plan, load_fn) for out_dir, plan, load_fn in plans]
    seconds = time.time() - start
    summaries = [writer.Summary.of(_read_json(FileSystems.join(d, schema.MANIFEST_NAME)), d, seconds=seconds)
                 for d in split_dirs]
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return cli.report(summaries, [f"one {runner} job wrote {len(plans)} split(s) in {seconds:.1f} s "
                                  f"(the time on each line below)"])


if __name__ == "__main__":
    sys.exit(main())
