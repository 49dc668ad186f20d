"""Real-format preprocessing speed per CPU core, on generated scenes of the real datasets' sizes.

    PYTHONPATH=. python benchmarks/data_prep_real.py [--scannet_vertices 150000] [--s3dis_points 1000000]
                                                     [--pano 512x1024] [--frames 4] [--frame 720x1280]

For each dataset one scene is written in its published layout (ScanNet: binary PLY mesh + segs and
aggregation JSON; S3DIS: Annotations/*.txt; Structured3D: a zip with a panorama and perspective
frames as PNGs), then timed with one thread: the dataset's load function, `writer.voxelize` (1 cm) and
`schema.encode_scene`. Sizes default to the datasets' typical scenes (ScanNet ~150k vertices, S3DIS
~1M points per room, Structured3D 512x1024 panoramas and 720x1280 frames).
"""

import argparse
import functools
import io
import json
import os
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image

from data_prep import s3dis, scannet, structured3d, writer
from ppt_jax import ply
from ppt_jax.data import schema


def _room_surface(rng, num):
    """Points on the floor, ceiling and 4 walls of a 6 x 5 x 3 m room."""
    size = np.array([6.0, 5.0, 3.0])
    p = rng.uniform(0, 1, (num, 3)) * size
    axis = rng.integers(0, 3, num)
    p[np.arange(num), axis] = rng.integers(0, 2, num) * size[axis]
    return p


def make_scannet(root, rng, num):
    side = int(np.sqrt(num))
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    coord = np.stack([i.ravel() * 0.02, j.ravel() * 0.02, 0.05 * np.sin(i.ravel() / 7.0)], 1).astype(np.float32)
    quad = (i[:-1, :-1] * side + j[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([quad, quad + side, quad + 1], 1),
                            np.stack([quad + 1, quad + side, quad + side + 1], 1)])
    color = rng.integers(0, 256, (len(coord), 3)).astype(np.uint8)
    sid = "scene0000_00"
    d = os.path.join(root, "scans", sid)
    os.makedirs(d)
    ply.write_ply(os.path.join(d, f"{sid}_vh_clean_2.ply"),
                  {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2], "red": color[:, 0],
                   "green": color[:, 1], "blue": color[:, 2], "alpha": np.full(len(coord), 255, np.uint8)}, faces)
    seg = (np.arange(len(coord)) // 200).tolist()
    with open(os.path.join(d, f"{sid}_vh_clean_2.0.010000.segs.json"), "w") as f:
        json.dump({"segIndices": seg}, f)
    groups = [{"id": g, "label": "chair" if g % 2 else "wall", "segments": list(range(g * 10, g * 10 + 10))}
              for g in range(max(seg) // 10 + 1)]
    with open(os.path.join(d, f"{sid}.aggregation.json"), "w") as f:
        json.dump({"segGroups": groups}, f)
    table = {"wall": 0, "chair": 4}
    return functools.partial(scannet.load_scene, raw=root, table=table, labelled=True), sid, len(coord)


def make_s3dis(root, rng, num):
    room = "Area_1/office_1"
    d = os.path.join(root, room, "Annotations")
    os.makedirs(d)
    points = _room_surface(rng, num)
    for k, name in enumerate(("ceiling_1", "floor_1", "wall_1", "wall_2", "chair_1", "table_1", "clutter_1")):
        part = points[k::7]
        rgb = rng.integers(0, 256, (len(part), 3))
        np.savetxt(os.path.join(d, f"{name}.txt"), np.concatenate([part, rgb], 1), fmt="%.6f %.6f %.6f %d %d %d")
    return functools.partial(s3dis.load_room, raw=root, angles={room: 90}, align_angle=True), room, num


def _png(arr, mode):
    out = io.BytesIO()
    Image.frombytes(mode, arr.shape[1::-1], np.ascontiguousarray(arr).tobytes()).save(out, format="PNG")
    return out.getvalue()


def _view(folder, rng, shape, depth_mm):
    i, j = np.indices(shape)
    depth = (depth_mm + 300 * np.sin(i / 40) * np.cos(j / 60)).astype(np.uint16)  # smooth surfaces
    return {f"{folder}/depth.png": _png(depth, "I;16"),
            f"{folder}/rgb_rawlight.png": _png(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), "RGB"),
            f"{folder}/semantic.png": _png(rng.integers(1, 41, shape, dtype=np.uint8), "L")}


def make_structured3d(root, rng, pano, frames, frame):
    base = "Structured3D/scene_00000/2D_rendering/1"
    files = {f"{base}/panorama/camera_xyz.txt": b"1000 2000 1500", **_view(f"{base}/panorama/full", rng, pano, 3000)}
    for k in range(frames):
        folder = f"{base}/perspective/full/{k}"
        angle = k * np.pi / 2
        files[f"{folder}/camera_pose.txt"] = (f"1000 2000 1500 {np.cos(angle)} {np.sin(angle)} 0 0 0 1 "
                                              "0.785 0.5 1").encode()
        files.update(_view(folder, rng, frame, 2500))
    with zipfile.ZipFile(os.path.join(root, "Structured3D_panorama_00.zip"), "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    points = pano[0] * pano[1] + frames * frame[0] * frame[1]
    return functools.partial(structured3d.load_room, raw=root), "scene_00000/room_1", points


def _time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scannet_vertices", type=int, default=150_000)
    p.add_argument("--s3dis_points", type=int, default=1_000_000)
    p.add_argument("--pano", default="512x1024")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--frame", default="720x1280")
    p.add_argument("--repeat", type=int, default=2, help="best of N")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    shape = lambda s: tuple(int(v) for v in s.split("x"))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "ScanNet": make_scannet(os.path.join(tmp, "scannet"), rng, args.scannet_vertices),
            "S3DIS": make_s3dis(os.path.join(tmp, "s3dis"), rng, args.s3dis_points),
            "Structured3D": make_structured3d(os.makedirs(os.path.join(tmp, "s3d")) or os.path.join(tmp, "s3d"),
                                              rng, shape(args.pano), args.frames, shape(args.frame)),
        }
        print(f"{'dataset':<13}{'input px/pts':>13}{'points':>11}{'sites':>11}{'load s':>8}{'voxel s':>9}"
              f"{'encode s':>9}{'total s':>9}{'points/s/core':>15}")
        for name, (load_fn, sid, size) in cases.items():
            raw, t_load = _time(lambda: load_fn(sid), args.repeat)
            vox, t_vox = _time(lambda: writer.voxelize(raw, 0.01, keep_full_res=True), args.repeat)
            _, t_enc = _time(lambda: schema.encode_scene({**vox, "dataset": name, "scene": sid, "grid_size": 0.01}),
                             args.repeat)
            total = t_load + t_vox + t_enc
            num = len(raw["coord"])
            print(f"{name:<13}{size:>13,}{num:>11,}{len(vox['coord']):>11,}{t_load:>8.2f}{t_vox:>9.2f}"
                  f"{t_enc:>9.2f}{total:>9.2f}{num / total:>15,.0f}")


if __name__ == "__main__":
    main()
