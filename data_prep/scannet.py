"""ScanNet v2 -> shards: `python -m data_prep.scannet --raw DIR --out DIR [--meta DIR] --workers N`.

Reads the published layout (docs/reference.md §9): `scans/<scene>/<scene>_vh_clean_2.ply` (test scenes in
`scans_test/`), `<scene>_vh_clean_2.0.010000.segs.json`, `<scene>.aggregation.json`, and from `--meta`
(default `--raw`) `scannetv2-labels.combined.tsv` and `scannetv2_{train,val,test}.txt`.
Points are the mesh vertices (no axis alignment, as the reference); normals are area-weighted vertex
normals; `segment` is ScanNet20 (NYU40 id via the label table), or ScanNet200 (label-table `id`) with
`--segment200`, which writes dataset "ScanNet200" with its 200 names; instance = segGroup id; -1 where
unannotated. Later segGroups overwrite earlier ones (as the reference). Test scenes have no labels.
"""

import csv
import functools
import json
import os
import sys

import numpy as np

from data_prep import cli, writer
from data_prep.scannet_classes import CLASS_LABELS_200, VALID_CLASS_IDS_20, VALID_CLASS_IDS_200
from ppt_jax import normals, ply

LABEL_TABLE = "scannetv2-labels.combined.tsv"
SPLITS = ("train", "val", "test")


def read_label_table(path, label_space):
    """raw_category -> shard label (-1 when the category is not one of the benchmark classes).

    The first row of a category wins, as the reference's `labels_pd[...].iloc[0]`.
    """
    column, valid = ("nyu40id", VALID_CLASS_IDS_20) if label_space == 20 else ("id", VALID_CLASS_IDS_200)
    lookup = {cid: i for i, cid in enumerate(valid)}
    table = {}
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        for name in ("raw_category", column):
            if name not in (rows.fieldnames or ()):
                raise cli.InputError(f"{path}: missing column {name!r}")
        for line, row in enumerate(rows, start=2):
            try:
                cid = int(row[column])
            except (TypeError, ValueError):
                raise cli.InputError(f"{path}:{line}: {column} {row[column]!r} is not an integer") from None
            table.setdefault(row["raw_category"], lookup.get(cid, -1))
    return table


def split_list_path(meta, split):
    return os.path.join(meta, f"scannetv2_{split}.txt")


def read_split_list(meta, split):
    with open(split_list_path(meta, split)) as f:
        return [line.strip() for line in f if line.strip()]


def _json(path, key):
    try:
        with open(path) as f:
            return json.load(f)[key]
    except FileNotFoundError:
        raise writer.SceneError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise writer.SceneError(path, f"invalid JSON: {err}") from None
    except KeyError:
        raise writer.SceneError(path, f"no {key!r} entry") from None


def seg_groups(path):
    """The aggregation file's segGroups, each checked for an int id, a str label, int segments."""
    groups = _json(path, "segGroups")
    if not isinstance(groups, list):
        raise writer.SceneError(path, f"'segGroups' is a {type(groups).__name__}, not a list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise writer.SceneError(path, f"segGroups[{i}] is a {type(group).__name__}, not an object")
        where = f"segGroups[{i}] (id {group.get('id')!r})"
        missing = [key for key in ("id", "label", "segments") if key not in group]
        if missing:
            raise writer.SceneError(path, f"{where} has no {', '.join(map(repr, missing))}")
        if not isinstance(group["id"], int) or not isinstance(group["label"], str):
            raise writer.SceneError(path, f"{where}: 'id' must be an integer and 'label' a string")
        segments = group["segments"]
        if not isinstance(segments, list) or not all(isinstance(x, int) for x in segments):
            raise writer.SceneError(path, f"{where}: 'segments' must be a list of integers")
    return groups


def scene_dir(raw, scene_id):
    for folder in ("scans", "scans_test"):
        path = os.path.join(raw, folder, scene_id)
        if os.path.isdir(path):
            return path
    raise writer.SceneError(os.path.join(raw, "scans", scene_id), "scene folder not found")


def read_mesh(path):
    """-> coord (V,3) f32, color (V,3) u8, faces (F,3) int; SceneError for unreadable meshes."""
    try:
        mesh = ply.read_ply(path)
    except FileNotFoundError:
        raise writer.SceneError(path, "file not found") from None
    except (OSError, ValueError) as err:
        raise writer.SceneError(path, f"unreadable PLY: {str(err).removeprefix(f'{path}: ')}") from None
    vertex, face = mesh.get("vertex"), mesh.get("face")
    need = ("x", "y", "z", "red", "green", "blue")
    if vertex is None or any(n not in vertex.dtype.names for n in need):
        raise writer.SceneError(path, f"PLY needs a vertex element with properties {need}")
    if face is None:
        raise writer.SceneError(path, "PLY has no face element (vertex normals need the faces)")
    faces = face["vertex_indices"]
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertex)):
        raise writer.SceneError(path, f"face indices outside 0..{len(vertex) - 1}")
    coord = np.stack([vertex[n] for n in "xyz"], axis=1).astype(np.float32)
    color = np.stack([vertex[n] for n in ("red", "green", "blue")], axis=1).astype(np.uint8)
    return coord, color, faces


def load_scene(scene_id, raw, table, labelled):
    """One scan -> raw point dict for the writer. Pure in its arguments."""
    folder = scene_dir(raw, scene_id)
    ply_path = os.path.join(folder, f"{scene_id}_vh_clean_2.ply")
    coord, color, faces = read_mesh(ply_path)
    num = len(coord)
    segment = np.full(num, -1, np.int32)
    instance = np.full(num, -1, np.int32)
    if labelled:
        segs_path = os.path.join(folder, f"{scene_id}_vh_clean_2.0.010000.segs.json")
        agg_path = os.path.join(folder, f"{scene_id}.aggregation.json")
        seg_indices = np.asarray(_json(segs_path, "segIndices"))
        if seg_indices.ndim != 1 or seg_indices.dtype.kind not in "iu":
            raise writer.SceneError(segs_path, "'segIndices' must be a list of integers")
        if seg_indices.shape != (num,):
            raise writer.SceneError(segs_path, f"{seg_indices.shape[0]} segIndices for {num} vertices")
        for group in seg_groups(agg_path):
            idx = np.isin(seg_indices, group["segments"])
            segment[idx] = table.get(group["label"], -1)
            instance[idx] = group["id"]
    return {"coord": coord, "color": color, "normal": normals.mesh_vertex_normals(coord, faces),
            "segment": segment, "instance": instance, "path": ply_path}


def add_arguments(p):
    p.add_argument("--meta", help="folder with the label table and split lists (default: --raw)")
    p.add_argument("--splits", type=cli.subset(SPLITS), default=",".join(SPLITS),
                   help="comma-separated subset of train,val,test")
    p.add_argument("--segment200", action="store_true", help="ScanNet200 labels (dataset 'ScanNet200')")


def splits(args):
    """The write_split arguments of every requested split (label table and split lists read first)."""
    meta = args.meta or cli.raw_dir(args)
    needed = [os.path.join(meta, LABEL_TABLE)] + [split_list_path(meta, s) for s in args.splits]
    cli.check_inputs([p for p in needed if not os.path.isfile(p)],
                     "--meta DIR names the folder of the label table and split lists (default: --raw), "
                     + cli.subset_hint("--splits", SPLITS))
    table = read_label_table(os.path.join(meta, LABEL_TABLE), 200 if args.segment200 else 20)
    dataset, names = ("ScanNet200", CLASS_LABELS_200) if args.segment200 else ("ScanNet", None)
    return [{"out_dir": args.out, "dataset": dataset, "split": split, "scene_ids": read_split_list(meta, split),
             "load_fn": functools.partial(load_scene, raw=args.raw, table=table, labelled=split != "test"),
             "keep_full_res": split != "train", "label_names": names} for split in args.splits]


def main(argv=None):
    return cli.main(__doc__.splitlines()[0], add_arguments, splits, argv)


if __name__ == "__main__":
    sys.exit(main())
