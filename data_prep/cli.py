"""Command-line plumbing shared by the dataset commands: common flags, summary lines, exit code.

Each dataset module has `add_arguments(parser)` (its own flags) and `splits(args)` (the
`writer.write_split` arguments of every requested split, all checked before any is written); `main`
runs them with the local writer, `data_prep.beam` with Apache Beam. Inputs the command cannot start
without (split lists, alignment files, label table, meshes) are all checked by `splits`, which raises
one `InputError` naming every missing or malformed file and the flag that selects a subset; `main`
prints it as one line and exits 2 before anything is written.
"""

import argparse
import os
import sys

from data_prep import writer


class InputError(ValueError):
    """An input the command cannot start without is missing or malformed (the message says which)."""


def check_inputs(missing, hint):
    """Raise one InputError listing every entry of `missing`, then `hint` (the flags to use)."""
    if missing:
        raise InputError(f"missing inputs: {', '.join(missing)}; {hint}")


def raw_dir(args):
    """--raw, checked to be a directory (a URL such as gs://... is left to the reader)."""
    if "://" not in args.raw and not os.path.isdir(args.raw):
        raise InputError(f"--raw {args.raw}: not a directory")
    return args.raw


def subset_hint(flag, choices):
    return f"{flag} selects a subset of {','.join(choices)}"


def add_raw_argument(p):
    p.add_argument("--raw", required=True, help="root of the dataset in its published layout")


def add_shard_arguments(p):
    """The flags every runner shares that decide what is written."""
    p.add_argument("--out", required=True, help="output folder; one sub-folder of shards per split")
    p.add_argument("--grid_size", type=float, default=0.01,
                   help="stored voxel size in metres (keep <= 0.01 so 2 cm training sampling works)")
    p.add_argument("--scenes_per_shard", type=int, default=16)


def parser(description):
    p = argparse.ArgumentParser(description=description)
    add_raw_argument(p)
    add_shard_arguments(p)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel worker processes")
    p.add_argument("--overwrite", action="store_true", help="redo finished shards too")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def subset(choices):
    """argparse type: a comma-separated subset of `choices`, as a list."""
    def parse(text):
        items = text.split(",")
        bad = [i for i in items if i not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(choices)}")
        return items
    return parse


def writer_kwargs(args):
    return {"grid_size": args.grid_size, "workers": args.workers, "overwrite": args.overwrite,
            "scenes_per_shard": args.scenes_per_shard, "progress": not args.no_progress}


def main(description, add_arguments, splits, argv):
    """A dataset command: parse, write every split with the local writer, report; the exit code."""
    p = parser(description)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        jobs = splits(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return report([writer.write_split(**job, **writer_kwargs(args)) for job in jobs])


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
