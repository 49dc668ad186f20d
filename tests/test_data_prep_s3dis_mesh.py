"""S3DIS normals from 2D-3D-S meshes: OBJ parsing, point-triangle distances, frames, Area 5 union."""

import os

import numpy as np
import pytest

from data_prep import s3dis, s3dis_mesh, writer
from test_data_prep_s3dis import GRID, raw  # noqa: F401  (the fixture)
from conftest import read_split


def write_obj(path, verts, faces):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("# rgb.obj\nmtllib rgb.mtl\n")
        f.writelines(f"v {x} {y} {z}\n" for x, y, z in verts)
        f.write("vt 0.5 0.5\n")
        f.writelines("f " + " ".join(f"{i + 1}/1" for i in face) + "\n" for face in faces)


def room_box_mesh():
    """Mesh-frame (x, y_m up, z_m = -y) quads: floor at room z=0 facing up, ceiling at z=1 facing down."""
    lo, hi = -0.05, 1.05  # inside the room's bounding box +-0.1: the crop keeps only such faces
    verts = [(lo, 0, -lo), (hi, 0, -lo), (hi, 0, -hi), (lo, 0, -hi), (lo, 1, -lo), (hi, 1, -lo), (hi, 1, -hi),
             (lo, 1, -hi)]
    return verts, [(0, 1, 2, 3), (4, 7, 6, 5)]


def test_point_triangle_distance_against_dense_sampling():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(50, 3)) for _ in range(3))
    p = rng.normal(size=(50, 3)) * 2
    exact = s3dis_mesh._point_triangle_distance(p, a, b, c)
    s, t = np.meshgrid(np.linspace(0, 1, 301), np.linspace(0, 1, 301))
    s, t = s[s + t <= 1], t[s + t <= 1]
    samples = a[:, None] + s[None, :, None] * (b - a)[:, None] + t[None, :, None] * (c - a)[:, None]
    sampled = np.min(np.sum((samples - p[:, None]) ** 2, -1), 1)
    assert np.all(exact <= sampled + 1e-12) and np.all(np.sqrt(sampled) - np.sqrt(exact) < 0.02)


def test_read_obj_fans_polygons(tmp_path):
    path = str(tmp_path / "m.obj")
    write_obj(path, [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)], [(0, 1, 2, 3)])
    v, f = s3dis_mesh.read_obj(path)
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3]])
    assert v.shape == (4, 3)
    with open(path, "a") as fh:
        fh.write("f 1 2 9\n")
    with pytest.raises(writer.SceneError, match="face index 9 > 4 vertices"):
        s3dis_mesh.read_obj(path)


@pytest.mark.parametrize("prefix", ["area_", "Area_"])  # 2D-3D-S's names, and the reference README's
def test_area_5_joins_5a_and_5b(tmp_path, prefix):
    write_obj(str(tmp_path / f"{prefix}5a" / "3d" / "rgb.obj"), [(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1, 2)])
    write_obj(str(tmp_path / f"{prefix}5b" / "3d" / "rgb.obj"), [(1, 2, 3), (1, 2, 4), (1, 3, 3)], [(0, 1, 2)])
    s3dis_mesh.area_mesh.cache_clear()
    verts, faces = s3dis_mesh.area_mesh(str(tmp_path), "Area_5")
    np.testing.assert_array_equal(faces, [[0, 1, 2], [3, 4, 5]])
    # 5b: (1, 2, 3) -> (-3, 2, 1) + (-4.09703582, 0, -6.22617759); then (x, y, z) -> (x, -z, y)
    np.testing.assert_allclose(verts[3], [-7.09703582, 5.22617759, 2.0])
    np.testing.assert_allclose(verts[0:3], [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    s3dis_mesh.area_mesh.cache_clear()


def test_cli_mesh_normals(raw, tmp_path):  # noqa: F811
    mesh_root = str(tmp_path / "Stanford2d3dDataset_noXYZ")
    write_obj(os.path.join(mesh_root, "Area_1", "3d", "rgb.obj"), *room_box_mesh())
    s3dis_mesh.area_mesh.cache_clear()
    out = str(tmp_path / "out")
    s3dis.main(["--raw", raw, "--out", out, "--areas", "Area_1", "--align_angle", "--mesh_root", mesh_root,
                "--workers", "1", "--no_progress"])
    manifest, scenes = read_split(os.path.join(out, "Area_1"))
    assert manifest["mesh_normals"] is True
    office = scenes["Area_1/office_1"]
    n, inv = len(GRID), office["inverse"]
    np.testing.assert_allclose(office["normal"][inv[:n]], np.tile([0, 0, -1], (n, 1)), atol=1e-6)  # ceiling
    np.testing.assert_allclose(office["normal"][inv[n + 2:2 * n + 2]], np.tile([0, 0, 1], (n, 1)), atol=1e-6)
    s3dis_mesh.area_mesh.cache_clear()


def test_mesh_normals_rotate_with_alignment(tmp_path):
    # a wall in the room plane x = 0 facing +x; angle 90 rotates by 1.5 pi: +x -> -y
    mesh = (np.array([[0.0, -0.05, -0.05], [0, 1.05, -0.05], [0, -0.05, 1.05], [0, 5, 5]]),
            np.array([[0, 1, 2], [0, 1, 3]]))  # the second face leaves the box: cropped away
    coord = np.array([[0.05, 0.0, 0.0], [0.02, 1.0, 1.0], [0.05, 1.0, 0.0], [0.05, 0.0, 1.0]])
    normal = s3dis_mesh.mesh_normals(coord, mesh)
    np.testing.assert_allclose(normal, np.tile([1, 0, 0], (4, 1)))
    np.testing.assert_allclose(normal @ s3dis.rotation(90).T, np.tile([0, -1, 0], (4, 1)), atol=1e-12)
    with pytest.raises(s3dis_mesh.CropError, match="no mesh faces inside"):
        s3dis_mesh.mesh_normals(coord + 10, mesh)


def test_missing_meshes_are_named_before_any_work(raw, tmp_path, capsys):  # noqa: F811
    mesh_root = tmp_path / "meshes"
    write_obj(str(mesh_root / "Area_5a" / "3d" / "rgb.obj"), *room_box_mesh())
    out = tmp_path / "out"
    assert s3dis.main(["--raw", raw, "--out", str(out), "--areas", "Area_1,Area_5", "--mesh_root",
                       str(mesh_root), "--workers", "1", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: missing inputs: {mesh_root}/Area_1/3d/rgb.obj (or area_1/3d/rgb.obj), "
                   f"{mesh_root}/Area_5b/3d/rgb.obj (or area_5b/3d/rgb.obj); --areas selects a subset "
                   f"of Area_1,Area_2,Area_3,Area_4,Area_5,Area_6")
    assert not out.exists()
