"""Command-line plumbing shared by the dataset commands: common flags, summary lines, exit code."""

import argparse
import os
import sys


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--raw", required=True, help="root of the dataset in its published layout")
    p.add_argument("--out", required=True, help="output folder; one sub-folder of shards per split")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel worker processes")
    p.add_argument("--grid_size", type=float, default=0.01,
                   help="stored voxel size in metres (keep <= 0.01 so 2 cm training sampling works)")
    p.add_argument("--scenes_per_shard", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="redo finished shards too")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def writer_kwargs(args):
    return {"grid_size": args.grid_size, "workers": args.workers, "overwrite": args.overwrite,
            "scenes_per_shard": args.scenes_per_shard, "progress": not args.no_progress}


def report(summaries, notes=()):
    """Print every split's summary line, the skipped scenes and `notes`; return the exit code."""
    for note in notes:
        print(f"note: {note}")
    for s in summaries:
        for n in s.notes:
            print(f"  repaired {n['scene']}: {n['note']}")
        print(s.line())
        for skip in s.skipped:
            print(f"  skipped {skip['scene']}: {skip['file']}: {skip['reason']}")
    skipped = sum(len(s.skipped) for s in summaries)
    if skipped:
        print(f"{skipped} scene(s) skipped; the shards hold the rest", file=sys.stderr)
    return 1 if skipped else 0
