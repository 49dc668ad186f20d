"""Structured3D -> shards: `python -m data_prep.structured3d --raw ZIP_DIR --out DIR --workers N`.

Reads the official per-scene zips directly (every `*.zip` in --raw; entries
`Structured3D/scene_XXXXX/2D_rendering/<room>/...`) and fuses, per room, every perspective full frame
(`perspective/full/<frame>/{camera_pose.txt, depth.png, rgb_rawlight.png, semantic.png}`) and the
panorama (`panorama/camera_xyz.txt`, `panorama/full/{depth,rgb_rawlight,semantic}.png`), back-projected
as the reference (docs/reference.md §9): depth in mm (0 = invalid), normals from cross products of neighbouring
pixels, points kept where |cos(view ray, normal)| > 0.15, depth is valid and semantic > 0; z up.
Perspective frames come first (sorted by name), then the panorama, so "first point per voxel" keeps
the same points as the reference's np.unique dedup. Labels: NYU40 ids in VALID_CLASS_IDS_25 -> 0..24,
others -1. Splits by scene number: < 3000 train, 3000..3249 val, >= 3250 test. A view whose files are
missing or unreadable is left out and noted in the manifest (the reference skips it silently); a room
with no valid points is skipped and reported. Maths in float64 (the reference mixes float32).
"""

import functools
import io
import os
import sys
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep import cli, writer
from ppt_jax import labels

VALID_CLASS_IDS_25 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 17, 18, 19, 22, 24, 25, 32, 34, 35, 38, 39, 40)
SPLITS = ("train", "val", "test")
_Z2Y = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float64)  # Structured3D z-up -> y-up camera world
_YZ_SWAP = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float64)
_CAM_AXES = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], np.float64)
_LABEL_LUT = np.full(256, -1, np.int32)
_LABEL_LUT[list(VALID_CLASS_IDS_25)] = np.arange(len(VALID_CLASS_IDS_25))


def split_of(scene):
    number = int(scene.split("_")[-1])
    return "train" if number < 3000 else "val" if number < 3250 else "test"


def _zip_files(raw):
    """Paths and seekable binary files of the *.zip in `raw`: a folder, or a URL that
    apache_beam.io.filesystems reads (gs://, s3://, ...), so Beam workers read the zips from a bucket."""
    if "://" not in raw:
        paths = sorted(os.path.join(raw, f) for f in os.listdir(raw) if f.endswith(".zip"))
        return paths, paths
    try:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
    except ImportError:
        raise ImportError(f"--raw {raw}: a URL needs apache-beam (pip install -r requirements-beam.txt)") from None
    paths = sorted(m.path for m in FileSystems.match([FileSystems.join(raw, "*.zip")])[0].metadata_list)
    return paths, [FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED) for p in paths]


class Archive:
    """All zips of a Structured3D download: which zip holds each entry, and the rooms with their views."""

    def __init__(self, raw):
        self.paths, files = _zip_files(raw)
        if not self.paths:
            raise FileNotFoundError(f"{raw}: no Structured3D *.zip files found")
        self.zips = []
        for path, file in zip(self.paths, files):
            try:
                self.zips.append(zipfile.ZipFile(file))
            except zipfile.BadZipFile as err:
                raise zipfile.BadZipFile(f"{path}: {err}") from None
        self.where, self.rooms = {}, {}
        for i, z in enumerate(self.zips):
            for name in z.namelist():
                self.where[name] = i
                parts = name.split("/")
                if len(parts) < 6 or parts[0] != "Structured3D" or parts[2] != "2D_rendering":
                    continue
                room = self.rooms.setdefault(f"{parts[1]}/room_{parts[3]}", {"frames": set(), "pano": False})
                if parts[4] == "perspective" and parts[5] == "full" and len(parts) > 7:
                    room["frames"].add(parts[6])
                elif parts[4] == "panorama":
                    room["pano"] = True

    def path(self, name):
        return f"{self.paths[self.where[name]]}:{name}" if name in self.where else name

    def read(self, name):
        if name not in self.where:
            raise writer.SceneError(name, "file not found in any zip")
        try:
            return self.zips[self.where[name]].read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise writer.SceneError(self.path(name), f"unreadable zip entry: {err}") from None

    def image(self, name, channels):
        try:
            img = Image.open(io.BytesIO(self.read(name)))
            arr = np.array(img.convert("RGB") if channels == 3 else img)
        except UnidentifiedImageError:  # its message holds the BytesIO's address: a different manifest each run
            raise writer.SceneError(self.path(name), "unreadable image: not an image format PIL knows") from None
        except (OSError, ValueError) as err:
            raise writer.SceneError(self.path(name), f"unreadable image: {err}") from None
        if channels == 1 and arr.ndim != 2:
            raise writer.SceneError(self.path(name), f"expected a one-channel image, got shape {arr.shape}")
        return arr

    def floats(self, name, count):
        try:
            values = np.array(self.read(name).split(), np.float64)
        except ValueError as err:
            raise writer.SceneError(self.path(name), f"not numeric: {err}") from None
        if values.size < count:
            raise writer.SceneError(self.path(name), f"expected >= {count} numbers, got {values.size}")
        return values


@functools.lru_cache(maxsize=2)
def archive(raw):
    """One Archive per process (the index of ~1M zip entries is built once per worker)."""
    return Archive(raw)


def cross_normals(points):
    """Per-pixel unit normals of an (H, W, 3) point image: cross(row difference, column difference).

    Differences are to the next row/column, zero on the last row/column (the reference's symmetric
    padding), where the normal is therefore the zero vector.
    """
    rows = np.zeros_like(points)
    rows[:-1] = points[:-1] - points[1:]
    cols = np.zeros_like(points)
    cols[:, :-1] = points[:, :-1] - points[:, 1:]
    normal = np.cross(rows, cols)
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.divide(normal, length, out=np.zeros_like(normal), where=length != 0)


def _keep(coord, depth, semantic):
    """The reference's point filter: grazing views, invalid depth and unlabelled pixels are dropped."""
    normal = cross_normals(coord)
    view = np.maximum(np.linalg.norm(coord, axis=-1), 1e-4)
    cosine = np.abs(np.sum(coord * normal, axis=-1) / view)
    return (cosine > 0.15) & (depth < 65535) & (semantic > 0)


def _images(arc, folder):
    depth = arc.image(f"{folder}/depth.png", 1).astype(np.float64)
    depth[depth == 0] = 65535
    color = arc.image(f"{folder}/rgb_rawlight.png", 3)
    semantic = arc.image(f"{folder}/semantic.png", 1)
    if not depth.shape == color.shape[:2] == semantic.shape:
        raise writer.SceneError(arc.path(f"{folder}/depth.png"), "depth, colour and semantic sizes differ")
    return depth, color, semantic


def perspective_view(arc, frame_dir):
    """One perspective frame -> (coord m, color, normal, semantic) of its kept pixels, y-up world."""
    pose = arc.floats(f"{frame_dir}/camera_pose.txt", 11)
    depth, color, semantic = _images(arc, frame_dir)
    front, up = pose[3:6], pose[6:9]
    rot = _Z2Y @ np.stack([front, up, np.cross(front, up)], axis=1)
    height, width = depth.shape
    kx, ky = (width / 2) / np.tan(pose[9]), (height / 2) / np.tan(pose[10])
    v, u = np.indices((height, width), dtype=np.float64)
    cam = np.stack([(u - width / 2) / kx, (v - height / 2) / ky, np.ones_like(u)], -1) * depth[..., None]
    coord = cam @ _CAM_AXES
    keep = _keep(coord, depth, semantic)
    coord = (coord / 1000) @ rot.T + _Z2Y @ pose[:3] / 1000
    return coord[keep], color[keep], cross_normals(coord)[keep], semantic[keep]


def panorama_view(arc, pano_dir):
    """The equirectangular panorama -> (coord m, color, normal, semantic) of its kept pixels, y-up world."""
    position = arc.floats(f"{pano_dir}/camera_xyz.txt", 3)[:3]
    depth, color, semantic = _images(arc, f"{pano_dir}/full")
    height, width = depth.shape
    azimuth = np.arange(width) / width * 2 * np.pi - np.pi
    elevation = np.pi / 2 - np.arange(height) / height * np.pi
    a, b = np.meshgrid(azimuth, elevation)
    coord = np.stack([np.cos(a) * np.cos(b), np.sin(b), np.sin(a) * np.cos(b)], -1) * depth[..., None] / 1000
    keep = _keep(coord, depth, semantic)
    normal = cross_normals(coord)
    coord = coord + _Z2Y @ position / 1000
    return coord[keep], color[keep], normal[keep], semantic[keep]


def load_room(scene_id, raw):
    """One room ("scene_XXXXX/room_<id>") -> raw point dict for the writer. Pure in its arguments."""
    arc = archive(raw)
    scene, room = scene_id.split("/room_")
    base = f"Structured3D/{scene}/2D_rendering/{room}"
    info = arc.rooms.get(scene_id)
    if info is None:
        raise writer.SceneError(base, "room not found in the zips")
    views, notes = [], []
    sources = [(perspective_view, f"{base}/perspective/full/{f}") for f in sorted(info["frames"])]
    sources += [(panorama_view, f"{base}/panorama")] if info["pano"] else []
    for view_fn, folder in sources:
        try:
            views.append(view_fn(arc, folder))
        except writer.SceneError as err:
            notes.append(f"view left out: {err}")
    views = [v for v in views if len(v[0])]
    if not views:
        raise writer.SceneError(base, "empty room: no valid points in any view"
                                + (f" ({'; '.join(notes)})" if notes else ""))
    coord, color, normal, semantic = (np.concatenate(parts) for parts in zip(*views))
    return {"coord": (coord @ _YZ_SWAP).astype(np.float32), "color": color.astype(np.uint8),
            "normal": (normal @ _YZ_SWAP).astype(np.float32), "segment": _LABEL_LUT[np.minimum(semantic, 255)],
            "instance": np.full(len(coord), -1, np.int32), "path": base, "notes": notes}


def add_arguments(p):
    p.add_argument("--splits", type=cli.subset(SPLITS), default=",".join(SPLITS),
                   help="comma-separated subset of train,val,test")


def splits(args):
    """The write_split arguments of every requested split (the zips' room index read first)."""
    try:
        rooms = sorted(archive(cli.raw_dir(args)).rooms)
    except (OSError, ImportError, zipfile.BadZipFile) as err:
        raise cli.InputError(str(err)) from None
    return [{"out_dir": args.out, "dataset": labels.STRUCTURED3D, "split": split,
             "scene_ids": [r for r in rooms if split_of(r.split("/")[0]) == split],
             "load_fn": functools.partial(load_room, raw=args.raw), "keep_full_res": split != "train"}
            for split in args.splits]


def main(argv=None):
    return cli.main(__doc__.splitlines()[0], add_arguments, splits, argv)


if __name__ == "__main__":
    sys.exit(main())
