"""Structured3D preprocessing from zips with PNGs in the official layout, against closed-form geometry."""

import io
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from data_prep import structured3d as s3d
from conftest import read_split

PANO_HW, FRAME_HW = (8, 16), (6, 8)
CAM = np.array([1000.0, 2000.0, 1500.0])  # camera position X Y Z in mm (Structured3D, z up)
FOV = 0.5  # half field of view (rad) in x and y


def png(arr, mode):
    img = Image.frombytes(mode, arr.shape[1::-1], np.ascontiguousarray(arr).tobytes())
    if mode == "P":
        img.putpalette(list(range(256)) * 3)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def semantic_image(shape):
    sem = np.full(shape, 1, np.uint8)  # wall -> 0
    sem[0, :] = 0  # unlabelled (also hides the panorama's pole row, whose normals are rounding noise)
    sem[1, :] = 22  # ceiling -> 16
    sem[2, 1] = 0  # unlabelled: dropped
    sem[2, 2] = sem[1, 3] = 0  # the invalid-depth pixel (2, 3)'s neighbours: their normals are garbage
    sem[3, 2] = 12  # NYU40 12 is not among the 25 classes -> -1
    return sem


def view_files(folder, shape, depth_mm, camera=None):
    depth = np.full(shape, depth_mm, np.uint16)
    depth[2, 3] = 0  # invalid depth: dropped
    color = np.concatenate([np.moveaxis(np.indices(shape), 0, -1), np.full((*shape, 1), 7)], -1).astype(np.uint8)
    files = {f"{folder}/depth.png": png(depth.byteswap() if depth.dtype.byteorder == ">" else depth, "I;16"),
             f"{folder}/rgb_rawlight.png": png(color, "RGB"), f"{folder}/semantic.png": png(semantic_image(shape), "P")}
    if camera is not None:
        files[camera[0]] = camera[1].encode()
    return files


def room_files(scene, room, pano=True, frame=True):
    base = f"Structured3D/{scene}/2D_rendering/{room}"
    files = {}
    if pano:
        files.update(view_files(f"{base}/panorama/full", PANO_HW, 3000,
                                (f"{base}/panorama/camera_xyz.txt", " ".join(map(str, CAM)))))
    if frame:
        pose = [*CAM, 1, 0, 0, 0, 0, 1, FOV, FOV, 1]  # position, front = +X, up = +Z, half fovs
        files.update(view_files(f"{base}/perspective/full/0", FRAME_HW, 2000,
                                (f"{base}/perspective/full/0/camera_pose.txt", " ".join(map(str, pose)))))
    return files


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def write_dataset(tmp_path):
    """Two zips with four rooms: one broken (unreadable depth), one repaired (a view left out)."""
    root = tmp_path / "zips"
    root.mkdir()
    files = {**room_files("scene_00000", 10), **room_files("scene_03000", 7, frame=False),
             **room_files("scene_03250", 2, frame=False)}
    broken = room_files("scene_00001", 3)
    del broken["Structured3D/scene_00001/2D_rendering/3/perspective/full/0/semantic.png"]
    files.update(broken)
    files["Structured3D/scene_03250/2D_rendering/2/panorama/full/depth.png"] = b"not a png"
    pano = {k: v for k, v in files.items() if "/panorama/" in k}
    write_zip(root / "Structured3D_panorama_00.zip", pano)
    write_zip(root / "Structured3D_perspective_full_00.zip", {k: v for k, v in files.items() if k not in pano})
    s3d.archive.cache_clear()
    return str(root)


@pytest.fixture
def raw(tmp_path):
    return write_dataset(tmp_path)


def test_cross_normals_hand_case():
    i, j = np.indices((3, 4))
    points = np.stack([j, i, np.zeros_like(i)], -1).astype(np.float64)
    normal = s3d.cross_normals(points)  # cross((0,-1,0), (-1,0,0)) = (0,0,-1)
    np.testing.assert_array_equal(normal[:-1, :-1], np.broadcast_to([0, 0, -1], (2, 3, 3)))
    assert not normal[-1].any() and not normal[:, -1].any()


def kept_pixels(shape):
    """Pixels the filter keeps: not the last row/column (zero normal), valid depth, labelled."""
    keep = semantic_image(shape) > 0
    keep[-1, :] = keep[:, -1] = False
    keep[2, 3] = False
    return keep


def test_panorama_matches_closed_form(raw):
    coord, color, normal, semantic = s3d.panorama_view(s3d.archive(raw),
                                                       "Structured3D/scene_00000/2D_rendering/10/panorama")
    keep = kept_pixels(PANO_HW)
    rows, cols = np.nonzero(keep)
    a = cols / PANO_HW[1] * 2 * np.pi - np.pi
    b = np.pi / 2 - rows / PANO_HW[0] * np.pi
    r, (x, y, z) = 3000.0, CAM
    # the reference's output frame swaps Structured3D's x and y (as in the perspective case)
    expect = np.stack([r * np.cos(a) * np.cos(b) + y, r * np.sin(a) * np.cos(b) + x, r * np.sin(b) + z], 1) / 1000
    np.testing.assert_allclose(coord @ s3d._YZ_SWAP, expect, atol=1e-9)  # z-up world after the swap
    radial = (expect - CAM[[1, 0, 2]] / 1000) / 3.0
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1, atol=1e-9)
    # a sphere's normals (coarse finite differences: within ~15 degrees)
    assert np.all(np.abs(np.sum((normal @ s3d._YZ_SWAP) * radial, 1)) > 0.95)
    np.testing.assert_array_equal(color[:, :2], np.stack([rows, cols], 1))
    np.testing.assert_array_equal(semantic, semantic_image(PANO_HW)[keep])


_TILTED = np.array([0.6, 0.7, -0.2]) / np.linalg.norm([0.6, 0.7, -0.2])


@pytest.mark.parametrize("front,up", [((1, 0, 0), (0, 0, 1)),  # looking along +X, +Z up
                                      (_TILTED, np.cross(np.cross(_TILTED, [0, 0, 1]), _TILTED)
                                       / np.linalg.norm(np.cross(np.cross(_TILTED, [0, 0, 1]), _TILTED)))])
def test_perspective_matches_closed_form(tmp_path, front, up):
    folder = "Structured3D/scene_00000/2D_rendering/1/perspective/full/0"
    pose = " ".join(map(str, [*CAM, *front, *up, FOV, 0.8 * FOV, 1]))
    write_zip(tmp_path / "p.zip", view_files(folder, FRAME_HW, 2000, (f"{folder}/camera_pose.txt", pose)))
    coord, color, normal, _ = s3d.perspective_view(s3d.Archive(str(tmp_path)), folder)
    keep = kept_pixels(FRAME_HW)  # a fronto-parallel plane: only the filter's fixed exclusions
    v, u = np.nonzero(keep)
    (h, w), d = FRAME_HW, 2000.0
    right_px = (u - w / 2) * d / ((w / 2) / np.tan(FOV))
    down_px = (v - h / 2) * d / ((h / 2) / np.tan(0.8 * FOV))
    # Structured3D world point: camera + depth * front + right * (front x up) - down * up; the reference's
    # output frame then swaps x and y (z stays up)
    world = CAM + d * np.asarray(front) + right_px[:, None] * np.cross(front, up) - down_px[:, None] * np.asarray(up)
    swap_xy = [1, 0, 2]
    np.testing.assert_allclose(coord @ s3d._YZ_SWAP, world[:, swap_xy] / 1000, atol=1e-9)
    facing = -np.asarray(front, np.float64)[swap_xy]  # the plane's normal faces the camera
    np.testing.assert_allclose(normal @ s3d._YZ_SWAP, np.broadcast_to(facing, coord.shape), atol=1e-9)
    np.testing.assert_array_equal(color[:, :2], np.stack([v, u], 1))


def test_cli_splits_labels_and_broken_rooms(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    code = s3d.main(["--raw", raw, "--out", out, "--workers", "1", "--no_progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert ("skipped scene_03250/room_2: Structured3D/scene_03250/2D_rendering/2: empty room: no valid "
            "points in any view") in printed
    assert "panorama/full/depth.png: unreadable image: not an image format PIL knows)" in printed
    assert "repaired scene_00001/room_3: view left out: " in printed and "semantic.png: file not found" in printed

    manifest, scenes = read_split(os.path.join(out, "train"))
    assert sorted(scenes) == ["scene_00000/room_10", "scene_00001/room_3"]
    assert manifest["dataset"] == "Structured3D" and len(manifest["label_names"]) == 25
    num_frame, num_pano = kept_pixels(FRAME_HW).sum(), kept_pixels(PANO_HW).sum()
    points = {s["scene"]: s["num_points"] for s in manifest["scenes"]}
    assert points == {"scene_00000/room_10": num_frame + num_pano, "scene_00001/room_3": num_pano}
    _, scenes = read_split(os.path.join(out, "val"))
    room = scenes["scene_03000/room_7"]
    sem = semantic_image(PANO_HW)[kept_pixels(PANO_HW)]
    # NYU40 1 (wall) -> 0, 22 (ceiling) -> 16, 12 (not in the 25) -> -1
    np.testing.assert_array_equal(room["origin_segment"], np.select([sem == 1, sem == 22], [0, 16], -1))
    assert (room["instance"] == -1).all()
    _, scenes = read_split(os.path.join(out, "test"))
    assert scenes == {}


def test_missing_zips(tmp_path, capsys):
    assert s3d.main(["--raw", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no Structured3D *.zip files found"
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    s3d.archive.cache_clear()
    assert s3d.main(["--raw", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'broken.zip'}: File is not a zip file"
    assert not (tmp_path / "out").exists()
