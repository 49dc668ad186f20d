"""S3DIS -> shards: `python -m data_prep.s3dis --raw Stanford3dDataset_v1.2 --out DIR --workers N`.

Reads `Area_N/Area_N_alignmentAngle.txt` (the room list with angles) and every
`Area_N/<room>/Annotations/*.txt` (x y z r g b per line, sorted by name) as the reference (docs/reference.md §9):
class = file-name prefix before "_" (unknown names such as "stairs" -> clutter), instance = index of the
object file. Each area is one split ("Area_1" ... "Area_6", the reference's split names), all written
with the full-resolution fields so any area can serve as the evaluation area (6-fold).
The stray control character in Area_5/office_19/Annotations/ceiling_1.txt ("103.0\\x100000") is
repaired on the fly (control characters become "0", as the dataset README's manual fix) and the
repair is listed in the manifest's notes.
`--align_angle` rotates each room about z by (2 - angle/180) * pi around its bounding-box centre.
Normals: with `--mesh_root` (Stanford2d3dDataset_noXYZ) from the area meshes as the reference's
--parse_normal (see s3dis_mesh.py); otherwise estimated by PCA over the 16 nearest neighbours, oriented
toward the room's bounding-box centre (into the room, the scanner's side).
"""

import functools
import glob
import os
import re
import sys

import numpy as np

from data_prep import cli, s3dis_mesh, writer
from ppt_jax import labels, normals
from ppt_jax.data import augment

CLASSES = labels.CLASS_NAMES[labels.S3DIS]
AREAS = tuple(f"Area_{i}" for i in range(1, 7))
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
NORMAL_NEIGHBOURS = 16


def alignment_path(raw, area):
    return os.path.join(raw, area, f"{area}_alignmentAngle.txt")


def read_rooms(raw, area):
    """(room, angle) pairs of an area, from its alignment file (comment lines start with '#')."""
    path = alignment_path(raw, area)
    rooms = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) != 2 or not re.fullmatch(r"-?\d+", words[1]):
                raise cli.InputError(f"{path}:{line_no}: expected '<room> <angle>', got {line.strip()!r}")
            rooms.append((words[0], int(words[1])))
    return rooms


def _bad_line(path, rows):
    """SceneError naming the first line of `rows` [(line, bytes)] with a token float() rejects."""
    for line, row in rows:
        for token in row.split():
            try:
                float(token)
            except ValueError:
                return writer.SceneError(path, f"line {line}: {token.decode(errors='replace')!r} is not a number")
    return writer.SceneError(path, "not numeric")


def read_object(path):
    """-> (points (n, 6) float64, notes); control characters are repaired and noted, an empty file noted.

    Every problem names the file and its line: a non-numeric token, a line without 6 values, a
    non-finite value, a colour outside 0..255.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise writer.SceneError(path, f"unreadable: {err.strerror}") from None
    notes = []
    bad = [m.start() for m in _CONTROL.finditer(data)]
    if bad:
        line = data.count(b"\n", 0, bad[0]) + 1
        notes.append(f"{path}: replaced {len(bad)} control character(s) with '0' (first on line {line})")
        data = _CONTROL.sub(b"0", data)
    rows = [(i, r) for i, r in enumerate(data.split(b"\n"), start=1) if r.strip()]
    try:
        values = np.array(data.split(), np.float64)
    except ValueError:
        raise _bad_line(path, rows) from None
    if values.size != 6 * len(rows):
        line = next(i for i, r in rows if len(r.split()) != 6)
        raise writer.SceneError(path, f"line {line}: expected 6 values (x y z r g b)")
    points = values.reshape(-1, 6)
    nonfinite = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(nonfinite):
        line, text = rows[nonfinite[0]]
        token = next(t for t, v in zip(text.split(), points[nonfinite[0]]) if not np.isfinite(v))
        raise writer.SceneError(path, f"line {line}: non-finite value {token.decode()!r}")
    colour = points[:, 3:]
    off = np.flatnonzero(((colour < 0) | (colour > 255)).any(axis=1))
    if len(off):
        value = colour[off[0]][(colour[off[0]] < 0) | (colour[off[0]] > 255)][0]
        raise writer.SceneError(path, f"line {rows[off[0]][0]}: colour {value:g} outside 0..255")
    if not rows:
        notes.append(f"{path}: empty object file (no points)")
    return points, notes


def rotation(angle):
    """The reference's --align_angle rotation: about z by (2 - angle/180) * pi."""
    return augment.rotation_matrix((2 - angle / 180) * np.pi, "z")


def align(coord, angle):
    """Rotate a room by `rotation(angle)` around its bounding-box centre (the reference)."""
    centre = (coord.max(0) + coord.min(0)) / 2
    return (coord - centre) @ rotation(angle).T + centre


def load_room(scene_id, raw, angles, align_angle, mesh_root=None):
    """One room ("Area_N/room") -> raw point dict for the writer. Pure in its arguments.

    With `mesh_root` (Stanford2d3dDataset_noXYZ) normals come from the area mesh, else from PCA.
    """
    room_dir = os.path.join(raw, scene_id)
    files = sorted(glob.glob(os.path.join(room_dir, "Annotations", "*.txt")))
    if not files:
        raise writer.SceneError(os.path.join(room_dir, "Annotations"), "empty room: no *.txt object files")
    parts, segment, instance, notes = [], [], [], []
    for object_id, path in enumerate(files):
        points, object_notes = read_object(path)
        name = os.path.basename(path).split("_")[0]
        parts.append(points)
        segment.append(np.full(len(points), CLASSES.index(name if name in CLASSES else "clutter")))
        instance.append(np.full(len(points), object_id))
        if not len(points):
            object_notes = [f"{note}: instance {object_id} has no points" for note in object_notes]
        notes += object_notes
    points = np.concatenate(parts)
    coord = points[:, :3]
    normal = None
    if mesh_root is not None:
        try:
            normal = s3dis_mesh.mesh_normals(coord, s3dis_mesh.area_mesh(mesh_root, scene_id.split("/")[0]))
        except s3dis_mesh.CropError as err:
            raise writer.SceneError(room_dir, f"mesh normals: {err}") from None
    if align_angle:
        coord = align(coord, angles[scene_id])
        normal = None if normal is None else normal @ rotation(angles[scene_id]).T
    color = points[:, 3:6]
    if normal is None:
        normal = normals.pca_normals(coord, NORMAL_NEIGHBOURS)
    return {"coord": coord.astype(np.float32), "color": color.astype(np.uint8),
            "normal": normal.astype(np.float32),
            "segment": np.concatenate(segment), "instance": np.concatenate(instance),
            "path": room_dir, "notes": notes}


def add_arguments(p):
    p.add_argument("--areas", type=cli.subset(AREAS), default=",".join(AREAS),
                   help="comma-separated subset of Area_1..Area_6")
    p.add_argument("--align_angle", action="store_true", help="rotate rooms by their alignment angle")
    p.add_argument("--mesh_root", help="Stanford2d3dDataset_noXYZ folder: normals from its meshes (as the "
                                       "reference's --parse_normal) instead of PCA estimates")


def splits(args):
    """The write_split arguments of every requested area (every alignment file and mesh checked first)."""
    raw = cli.raw_dir(args)
    missing = [p for p in (alignment_path(raw, a) for a in args.areas) if not os.path.isfile(p)]
    if args.mesh_root:
        missing += [s3dis_mesh.describe_missing(args.mesh_root, part) for area in args.areas
                    for part, path in s3dis_mesh.mesh_files(args.mesh_root, area) if path is None]
    cli.check_inputs(missing, cli.subset_hint("--areas", AREAS))
    jobs = []
    for area in args.areas:
        angles = {f"{area}/{room}": angle for room, angle in read_rooms(args.raw, area)}
        load = functools.partial(load_room, raw=args.raw, angles=angles, align_angle=args.align_angle,
                                 mesh_root=args.mesh_root)
        jobs.append({"out_dir": args.out, "dataset": labels.S3DIS, "split": area, "scene_ids": list(angles),
                     "load_fn": load, "keep_full_res": True,
                     "manifest_extra": {"align_angle": args.align_angle, "mesh_normals": bool(args.mesh_root)}})
    return jobs


def main(argv=None):
    return cli.main(__doc__.splitlines()[0], add_arguments, splits, argv)


if __name__ == "__main__":
    sys.exit(main())
