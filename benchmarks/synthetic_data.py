"""Synthetic-data generation speed and scene sizes (data_prep.synthetic).

    python -m benchmarks.synthetic_data [--density 0.05] [--per_domain 20] [--scenes 160,80,40]
                                       [--workers 1] [--full_density_scenes 1]

1. `make_scene` alone, one core: seconds per scene and points per scene for each domain.
2. The same at density 1 (the real datasets' point density) for a few scenes.
3. `generate` end to end (scenes + voxelization + shards + manifests, train and val) with --workers.
The issue's target: a few hundred scenes in under a minute on 2 cores at the default density. At that
density one worker is fastest: each extra worker is a spawned process that imports TensorFlow, once per
split, which costs more than the small scenes it would make.
"""

import argparse
import tempfile
import time

import numpy as np

from data_prep import synthetic


def _scenes(domain, count, density, prefix="bench"):
    sizes, start = [], time.perf_counter()
    for i in range(count):
        sizes.append(len(synthetic.make_scene(domain, f"{prefix}_{i:05d}", seed=0, density=density)["coord"]))
    seconds = (time.perf_counter() - start) / count
    sizes = np.array(sizes)
    print(f"  {domain:13s} density {density:<5g}: {seconds * 1e3:7.1f} ms/scene, points/scene mean "
          f"{sizes.mean():,.0f} (min {sizes.min():,}, max {sizes.max():,})")


def timed_generate(out, **kwargs):
    """`synthetic.generate(out, **kwargs)` timed: (seconds, scenes written, raw points, 1 cm sites)."""
    start = time.perf_counter()
    result = synthetic.generate(out, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    summaries = [s for splits in result.values() for s in splits.values()]
    return (seconds, sum(s.num_written for s in summaries), sum(s.num_points for s in summaries),
            sum(s.num_sites for s in summaries))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--density", type=float, default=synthetic.DEFAULT_DENSITY)
    parser.add_argument("--per_domain", type=int, default=20)
    parser.add_argument("--full_density_scenes", type=int, default=1)
    parser.add_argument("--scenes", default=",".join(map(str, synthetic.DEFAULT_SCENES)))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    print("make_scene, one core:")
    for domain in synthetic.ORDER:
        _scenes(domain, args.per_domain, args.density)
    for domain in synthetic.ORDER:
        _scenes(domain, args.full_density_scenes, 1.0)

    counts = [int(c) for c in args.scenes.split(",")]
    with tempfile.TemporaryDirectory() as out:
        seconds, scenes, points, sites = timed_generate(out, scenes=counts, density=args.density,
                                                        workers=args.workers)
    print(f"generate {counts} (+ val), {args.workers} workers: {scenes} scenes, {points:,} points -> "
          f"{sites:,} 1 cm sites in {seconds:.1f} s ({scenes / seconds:.1f} scenes/s)")


if __name__ == "__main__":
    main()
