"""ppt_jax.ply: hand-written ASCII and big-endian binary files read right, round trips in both formats,
polygon meshes written by plyfile fan-triangulated, clear errors naming the file."""

import struct

import numpy as np
import plyfile
import pytest

from ppt_jax import ply

HEADER = ["ply", "comment hand written", "element vertex 2", "property uchar red",
          "property float z", "property double x", "property int label", "element face 1",
          "property list uchar int vertex_index", "end_header"]


def test_ascii_any_property_order_and_vertex_index_faces(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("\n".join(HEADER[:1] + ["format ascii 1.0"] + HEADER[1:]
                              + ["7 0.5 -1.25 3", "255 2 4 -1", "3 1 0 1"]) + "\n")
    out = ply.read_ply(path)
    v = out["vertex"]
    assert v.dtype.names == ("red", "z", "x", "label")
    np.testing.assert_array_equal(v["red"], [7, 255])
    np.testing.assert_array_equal(v["x"], [-1.25, 4.0])
    np.testing.assert_array_equal(v["label"], [3, -1])
    np.testing.assert_array_equal(out["face"]["vertex_indices"], [[1, 0, 1]])


def test_big_endian_binary(tmp_path):
    path = tmp_path / "b.ply"
    body = b"".join(struct.pack(">Bfdi", *row) for row in ((7, 0.5, -1.25, 3), (255, 2.0, 4.0, -1)))
    body += struct.pack(">B3i", 3, 1, 0, 1)
    header = HEADER[:1] + ["format binary_big_endian 1.0"] + HEADER[1:]
    path.write_bytes(("\n".join(header) + "\n").encode() + body)
    out = ply.read_ply(path)
    np.testing.assert_array_equal(out["vertex"]["z"], [0.5, 2.0])
    np.testing.assert_array_equal(out["face"]["vertex_indices"], [[1, 0, 1]])


@pytest.mark.parametrize("text", [False, True])
def test_round_trip(tmp_path, text):
    rng = np.random.default_rng(0)
    vertex = {"x": rng.normal(size=5).astype(np.float32), "label": np.arange(5, dtype=np.int32),
              "green": rng.integers(0, 255, 5).astype(np.uint8)}
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    ply.write_ply(tmp_path / "r.ply", vertex, faces, text=text)
    out = ply.read_ply(tmp_path / "r.ply")
    assert out["vertex"].dtype.names == ("x", "label", "green")
    for k, v in vertex.items():
        np.testing.assert_array_equal(out["vertex"][k], v)
    np.testing.assert_array_equal(out["face"]["vertex_indices"], faces)


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_text("solid cube\n")
    with pytest.raises(ply.NotPlyError, match=f"{bad}: not a PLY file"):
        ply.read_ply(bad)
    ply.write_ply(tmp_path / "t.ply", {"x": np.zeros(4, np.float32)}, np.array([[0, 1, 2]]))
    data = (tmp_path / "t.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"t.ply: truncated PLY"):
        ply.read_ply(tmp_path / "t.ply")
    line = tmp_path / "line.ply"
    line.write_text("\n".join(["ply", "format ascii 1.0", "element vertex 4", "property float x",
                               "element face 2", "property list uchar int vertex_indices",
                               "end_header", "0", "1", "2", "3", "3 0 1 2", "2 0 1"]) + "\n")
    with pytest.raises(ValueError, match="line.ply: face 1 has 2 vertices"):
        ply.read_ply(line)


# Polygons as other tools write them (plyfile itself, variable-length lists), and the triangles expected
# of each: the fan (v0, vi, vi+1) of every face, in face order.
QUADS = ([[0, 1, 2, 3], [3, 2, 4, 5]],
         [[0, 1, 2], [0, 2, 3], [3, 2, 4], [3, 4, 5]])
MIXED = ([[0, 1, 2], [1, 3, 4, 2], [2, 4, 5], [0, 2, 5, 6, 7]],
         [[0, 1, 2], [1, 3, 4], [1, 4, 2], [2, 4, 5], [0, 2, 5], [0, 5, 6], [0, 6, 7]])


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("mesh", [QUADS, MIXED], ids=["quads", "triangles+quads+pentagon"])
def test_polygon_faces_written_by_plyfile_come_back_fan_triangulated(tmp_path, fmt, mesh):
    polygons, triangles = mesh
    order = {"binary_big_endian": ">"}.get(fmt, "<")
    vertex = np.zeros(8, [("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4")])
    vertex["x"] = np.arange(8)
    extra = [("flags", "u1")] if mesh is MIXED else []  # another face property: read past, dropped
    face = np.zeros(len(polygons), [("vertex_indices", object)] + extra)
    face["vertex_indices"] = [np.array(p, np.int32) for p in polygons]
    path = tmp_path / "mesh.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                     plyfile.PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"},
                                                 val_types={"vertex_indices": "i4"})],
                    text=fmt == "ascii", byte_order=order).write(str(path))
    assert f"format {fmt} 1.0".encode() in path.read_bytes()[:64]
    out = ply.read_ply(path)
    np.testing.assert_array_equal(out["vertex"]["x"], np.arange(8))
    assert out["face"].dtype.names == ("vertex_indices",)
    np.testing.assert_array_equal(out["face"]["vertex_indices"], triangles)
