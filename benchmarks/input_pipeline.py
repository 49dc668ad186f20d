"""Input-pipeline throughput on synthetic shards: preprocessing and training pipeline, per CPU core.

    python benchmarks/input_pipeline.py [--density 0.5] [--scenes 8,4,2] [--steps 12] [--num_sites 100000]

1. Preprocessing: `data_prep.synthetic.generate` with one worker (= one core): scenes/s and raw
   points/s.
2. Per-transform profile of the training augmentation on one scene of each domain (one thread).
3. Evaluation: one val scene per domain through `eval_dataset` and `fragment_dataset`.
4. Training pipeline (`ppt_jax.data.train_dataset`, batch 1, Mix3D 0.8 as the reference) with
   `num_parallel_calls=1` (one core) and AUTOTUNE (all cores): scenes/s and sites/s delivered.

The target: one pipeline core delivers rows at least twice as fast as the full-size train step
consumes them (the step's target time and the measured rates: benchmarks/README.md).
"""

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.synthetic_data import timed_generate
from ppt_jax.data import augment, pipeline, records
from ppt_jax.data import config as data_config

STEP_SECONDS = 7.0  # a full-size 1-scene train step on the 2-core host


def _preprocess(out, scenes, density):
    seconds, count, points, sites = timed_generate(out, scenes=scenes, val_scenes=(1, 1, 1),
                                                   density=density, workers=1, scenes_per_shard=4)
    print(f"preprocessing (1 worker): {count} scenes, {points:,} points -> {sites:,} 1 cm sites in "
          f"{seconds:.1f} s: {count / seconds:.2f} scenes/s/core, {points / seconds:,.0f} points/s/core")


def _profile(cfg):
    print("augmentation profile (one thread, ms per scene):")
    for name in cfg.datasets:
        index = records.SceneIndex(cfg.train_dirs[name])
        t0 = time.perf_counter()
        scene = index.read(0)
        read_ms = 1e3 * (time.perf_counter() - t0)
        cloud = pipeline._cloud(scene, name)
        rng = np.random.default_rng(0)
        steps = [
            ("center_shift", lambda c: augment.center_shift(c)),
            ("dropout(p=1)", lambda c: augment.random_dropout(c, rng, p=1.0)),
            ("rotate z,x,y", lambda c: augment.rotate(augment.rotate(augment.rotate(
                c, 0.3, "z", (0, 0, 0)), 0.01, "x"), 0.01, "y")),
            ("scale+flip+jitter", lambda c: augment.random_jitter(
                augment.random_flip(augment.random_scale(c, rng), rng), rng)),
            ("elastic(p=1)", lambda c: augment.elastic_distortion(c, rng, p=1.0)),
            ("chromatic x3(p=1)", lambda c: augment.chromatic_jitter(augment.chromatic_translation(
                augment.chromatic_auto_contrast(c, rng, p=1.0), rng, p=1.0), rng, p=1.0)),
            ("grid_sample 2cm", lambda c: augment.grid_sample_train(c, rng, cfg.grid_size)),
            ("sphere_crop 80%", lambda c: augment.sphere_crop(c, rng, int(0.8 * len(c["coord"])))),
            ("shuffle", lambda c: augment.shuffle(c, rng)),
        ]
        parts = [f"read+decode {read_ms:.0f}"]
        for label, fn in steps:
            t0 = time.perf_counter()
            cloud = fn(cloud)
            parts.append(f"{label} {1e3 * (time.perf_counter() - t0):.0f}")
        print(f"  {name} ({len(scene['coord']):,} sites): " + ", ".join(parts))


def _evaluate(cfg, out):
    """Single-pass val rows and 13-view test fragments of one val scene per dataset (one thread)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.num_parallel_calls = 1
    for name in cfg.datasets:
        split_dir = os.path.join(out, name, "val")
        start = time.perf_counter()
        points = sum(int((b["inverse"] >= 0).sum()) for b in pipeline.eval_dataset(split_dir, name,
                                                                                   cfg))
        val_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = sum(int(b["mask"].any(1).sum()) for scene in pipeline.fragment_dataset(
            split_dir, name, cfg) for b in scene["batches"])
        test_s = time.perf_counter() - start
        print(f"  {name}: val row of {points:,} points in {val_s:.2f} s; test: {rows} fragment rows "
              f"(13 views) in {test_s:.2f} s")


def _train(cfg, steps, parallel):
    cfg = cfg.copy_and_resolve_references()
    cfg.num_parallel_calls = parallel
    it = pipeline.train_dataset(cfg)
    next(it)  # start-up: index, first batch
    start = time.perf_counter()
    sites = 0
    for _ in range(steps):
        sites += int(next(it)["mask"].sum())
    seconds = time.perf_counter() - start
    scenes = steps * cfg.batch_size * (1 + cfg.mix_prob)  # a mixed row reads two scenes (expected)
    return steps * cfg.batch_size / seconds, sites / seconds, scenes / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--scenes", default="8,4,2", help="Structured3D,ScanNet,S3DIS train scenes")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--num_sites", type=int, default=100_000)
    args = parser.parse_args()
    cores = os.cpu_count()
    scenes = tuple(int(c) for c in args.scenes.split(","))
    with tempfile.TemporaryDirectory() as out:
        _preprocess(out, scenes, args.density)
        cfg = data_config.default_config()
        cfg.train_dirs = {name: os.path.join(out, name, "train") for name in cfg.datasets}
        cfg.batch_size = 1
        cfg.num_sites = args.num_sites
        cfg.ratios = (1, 1, 1)
        _profile(cfg)
        cfg.eval_num_sites = 1 << 19
        cfg.eval_num_points = 1 << 21
        print("evaluation pipelines (one thread):")
        _evaluate(cfg, out)
        for parallel, used in ((1, 1), (-1, cores)):
            rows, sites, reads = _train(cfg, args.steps, parallel)
            print(f"train pipeline, num_parallel_calls={parallel} ({used} core(s)): {rows:.2f} rows/s "
                  f"({reads:.2f} scene reads/s with Mix3D), {sites:,.0f} sites/s; per core: "
                  f"{rows / used:.3f} rows/s, {sites / used:,.0f} sites/s; target >= "
                  f"{2 / STEP_SECONDS:.3f} rows/s/core "
                  f"({rows / used * STEP_SECONDS / 2:.1f}x the need)")


if __name__ == "__main__":
    main()
