"""Inference tool, model-free parts: PLY/shard input and its checks, voting, class colours, the PNG."""

import ml_collections
import numpy as np
import plyfile
import pytest
from PIL import Image

from ppt_jax import ply
from ppt_jax import labels, predict, render
from ppt_jax.data import config as data_config
from ppt_jax.data import schema


def _box_room(n_per_face=400, seed=0):
    """Points on the 6 faces of a 4 x 3 x 2.5 m box with inward normals."""
    rng = np.random.default_rng(seed)
    size = np.array([4.0, 3.0, 2.5])
    coords, normals = [], []
    for axis in range(3):
        for side in (0.0, 1.0):
            p = rng.random((n_per_face, 3)) * size
            p[:, axis] = side * size[axis]
            nrm = np.zeros((n_per_face, 3))
            nrm[:, axis] = 1.0 if side == 0.0 else -1.0
            coords.append(p)
            normals.append(nrm)
    return np.concatenate(coords).astype(np.float32), np.concatenate(normals)


@pytest.mark.parametrize("kwargs, message", [
    (dict(coord=np.zeros((0, 3))), "no points"),
    (dict(coord=np.array([[0, 0, 0], [np.nan, 1, 1]], np.float32)),
     "1 of 2 points have NaN/inf coordinates \\(first at vertex 1\\)"),
    (dict(color=None), "no vertex colours"),
    (dict(color=np.array([[0.1, np.inf, 0.3]] * 2)), "colours contain NaN/inf"),
    (dict(normal=np.array([[0, 0, np.nan]] * 2)), "normals contain NaN/inf"),
])
def test_bad_clouds_name_the_file(kwargs, message):
    args = dict(coord=np.ones((2, 3), np.float32), color=np.zeros((2, 3), np.uint8),
                normal=np.array([[0, 0, 1.0]] * 2))
    args.update(kwargs)
    with pytest.raises(predict.InputError, match="^scans/room.ply: " + message):
        predict._checked("room", args["coord"], args["color"], args["normal"], "scans/room.ply")


def test_float_colours_in_unit_range_become_bytes():
    cloud = predict._checked("r", np.zeros((2, 3)), np.array([[0.0, 0.5, 1.0]] * 2), None, "f.ply")
    np.testing.assert_array_equal(cloud.color[0], [0, 128, 255])
    assert cloud.color.dtype == np.uint8 and cloud.normal.shape == (2, 3)


def test_input_files_of_a_directory(tmp_path):
    for name in ("b.ply", "a.PLY", "c.tfrecord", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.rsplit("/", 1)[1] for p in predict.input_files(str(tmp_path))] == [
        "a.PLY", "b.ply", "c.tfrecord"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(predict.InputError, match="empty: directory holds no .ply or .tfrecord"):
        predict.input_files(str(tmp_path / "empty"))
    with pytest.raises(predict.InputError, match="missing.ply: no such file"):
        predict.input_files(str(tmp_path / "missing.ply"))


def test_class_colours_follow_the_union_name():
    chair = {d: render.class_colors(d)[labels.CLASS_NAMES[d].index("chair")] for d in labels.DATASETS}
    assert len({tuple(c) for c in chair.values()}) == 1
    assert len({tuple(c) for c in render.UNION_COLORS.values()}) == len(labels.UNION_NAMES)
    rgb = render.colorize(np.array([-1, 0, 1]), labels.S3DIS)
    np.testing.assert_array_equal(rgb[0], render.UNLABELLED_COLOR)
    np.testing.assert_array_equal(rgb[1], render.UNION_COLORS["ceiling"])


def test_render_writes_a_png_with_two_views(tmp_path):
    coord, _ = _box_room(n_per_face=200)
    label = (coord[:, 2] < 0.01).astype(np.int32) * 1 + (coord[:, 2] > 2.49) * 0 - (coord[:, 0] > 3.99)
    path = render.render_views(str(tmp_path / "room.png"), coord, label, labels.SCANNET, dpi=50)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    floor = np.array(render.UNION_COLORS["floor"])
    assert (np.abs(pixels.astype(int) - floor).sum(1) < 10).sum() > 50   # floor points are drawn


def _write_ascii(path, coord, color=None, normal=None, faces=None):
    props = ["float x", "float y", "float z"]
    cols = [coord]
    if normal is not None:
        props += ["float nx", "float ny", "float nz"]
        cols.append(normal)
    if color is not None:
        props += ["uchar red", "uchar green", "uchar blue"]
        cols.append(color)
    lines = ["ply", "format ascii 1.0", "comment made by hand", f"element vertex {len(coord)}"]
    lines += [f"property {p}" for p in props]
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    table = np.concatenate(cols, 1) if cols else np.zeros((0, 0))
    lines += [" ".join(f"{v:g}" for v in row) for row in table]
    if faces is not None:
        lines += ["3 " + " ".join(str(i) for i in f) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_ascii_ply_with_faces_and_normals(tmp_path):
    coord, normal = _box_room(n_per_face=20)
    color = (np.arange(len(coord))[:, None] * [1, 3, 7] % 256).astype(np.uint8)
    path = _write_ascii(tmp_path / "room.ply", coord, color, normal, faces=[[0, 1, 2], [2, 3, 4]])
    cloud = predict.read_ply_cloud(path)
    assert cloud.name == "room"
    np.testing.assert_allclose(cloud.coord, coord, atol=1e-5)
    np.testing.assert_array_equal(cloud.color, color)
    np.testing.assert_allclose(cloud.normal, normal, atol=1e-6)


def test_binary_ply_without_normals_gets_unit_inward_normals(tmp_path):
    coord, truth = _box_room(n_per_face=1500)
    color = np.full((len(coord), 3), 200, np.uint8)
    path = str(tmp_path / "box.ply")
    vertex = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2], "red": color[:, 0],
              "green": color[:, 1], "blue": color[:, 2]}
    ply.write_ply(path, vertex, faces=np.array([[0, 1, 2]]))
    cloud = predict.read_ply_cloud(path)
    np.testing.assert_array_equal(cloud.coord, coord)
    np.testing.assert_allclose(np.linalg.norm(cloud.normal, axis=1), 1.0, atol=1e-5)
    size = np.array([4.0, 3.0, 2.5])
    inner = ((coord > 0.4) | np.isclose(coord, 0)).all(1) & \
        ((coord < size - 0.4) | np.isclose(coord, size)).all(1)
    assert inner.sum() > 1000
    assert np.einsum("ni,ni->n", cloud.normal[inner], truth[inner]).min() > 0.99


def test_binary_ply_mesh_with_quad_faces_is_read(tmp_path):
    """A binary mesh of quads (as plyfile writes one) gives its vertices, as the same mesh in ASCII."""
    coord = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0], [2, 1, 0]], np.float32)
    color = (np.arange(18).reshape(6, 3) * 13).astype(np.uint8)
    vertex = np.empty(6, [(n, "<f4") for n in "xyz"] + [(c, "u1") for c in ("red", "green", "blue")])
    for i, name in enumerate("xyz"):
        vertex[name] = coord[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertex[name] = color[:, i]
    face = np.empty(2, [("vertex_indices", object)])
    face["vertex_indices"] = [np.array([0, 1, 2, 3], np.int32), np.array([1, 4, 5, 2], np.int32)]
    path = str(tmp_path / "quads.ply")
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"),
                     plyfile.PlyElement.describe(face, "face")], byte_order="<").write(path)
    cloud = predict.read_ply_cloud(path)
    np.testing.assert_array_equal(cloud.coord, coord)
    np.testing.assert_array_equal(cloud.color, color)


def test_bad_ply_files_name_the_file_and_the_problem(tmp_path):
    coord = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    color = np.zeros((3, 3), np.uint8)
    notply = tmp_path / "notes.ply"
    notply.write_text("hello\n")
    cases = {
        str(notply): "not a PLY file",
        _write_ascii(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3))): "no points",
        _write_ascii(tmp_path / "grey.ply", coord): "no vertex colours",
        _write_ascii(tmp_path / "nan.ply", np.array([[0, 0, 0], [np.nan, 0, 0], [1, 1, 1]]),
                     color): "1 of 3 points have NaN/inf coordinates",
    }
    short = tmp_path / "short.ply"
    ply.write_ply(str(short), {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]})
    short.write_bytes(short.read_bytes()[:-5])
    cases[str(short)] = "unreadable PLY: truncated"
    for path, message in cases.items():
        with pytest.raises(predict.InputError, match=f"^{path}: {message}"):
            predict.read_ply_cloud(path)


def test_shard_input_yields_every_scene(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "shard-00000-of-00001.tfrecord")
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as w:
        for name, n in (("a", 5), ("b", 7)):
            grid = np.stack([np.arange(n), np.zeros(n), np.zeros(n)], 1).astype(np.int32)
            w.write(schema.encode_scene({
                "dataset": "ScanNet", "scene": name, "grid_size": 0.01, "coord": grid * 0.01,
                "color": rng.integers(0, 255, (n, 3)).astype(np.uint8),
                "normal": np.tile([0, 0, 1.0], (n, 1)), "grid_coord": grid,
                "segment": np.zeros(n, np.int32), "instance": np.zeros(n, np.int32)}))
    clouds = list(predict.read_clouds(path))
    assert [(c.name, len(c.coord)) for c in clouds] == [("a", 5), ("b", 7)]
    bad = tmp_path / "junk.tfrecord"
    bad.write_bytes(b"junk" * 10)
    with pytest.raises(predict.InputError, match="junk.tfrecord: not a readable shard"):
        list(predict.read_clouds(str(bad)))


class _ColourOracle:
    """A stand-in model: class 1 where the red channel is bright, else class 0 (any view)."""

    grid_size = 0.02

    def __init__(self):
        from configs import joint
        self.config = ml_collections.ConfigDict({"data": data_config.default_config().to_dict(),
                                                 "sparse": joint.get_config().sparse.to_dict()})
        self.rows = 0

    def condition(self, dataset):
        return labels.SCANNET, 0

    def spec(self, batches):
        return predict.exact_spec(batches, self.config.sparse)

    def new_votes(self, rows):
        return np.zeros((rows + 7, 25))       # extra rows, as the device table is rounded up

    def vote(self, votes, batch, spec):
        assert spec.capacities[0] == batch["mask"].shape[1]
        self.rows += len(batch["mask"])
        bright = batch["feat"][..., 0] > 0.5
        real = batch["index"] >= 0
        np.add.at(votes[:, 0], batch["index"][real], ~bright[real])
        np.add.at(votes[:, 1], batch["index"][real], bright[real])
        return votes


@pytest.mark.parametrize("vote", [False, True])
def test_every_point_gets_its_own_vote(vote):
    # two points per 2 cm voxel in places, colours differing inside a voxel: only a per-point
    # mapping (fragments x views, index back to the point) gives each point its own colour's class
    rng = np.random.default_rng(0)
    coord = rng.random((3000, 3)).astype(np.float32) * [1.0, 1.0, 0.2]
    red = rng.random(3000) > 0.5
    color = np.zeros((3000, 3), np.uint8)
    color[red, 0] = 255
    cloud = predict.Cloud("c", coord, color, np.tile(np.float32([0, 0, 1]), (3000, 1)), "c.ply")
    oracle = _ColourOracle()
    label, confidence = predict.predict_cloud(oracle, cloud, "scannet", vote=vote, batch_size=4)
    assert label.shape == (3000,) and label.dtype == np.int32
    if vote:
        np.testing.assert_array_equal(label, red.astype(np.int32))
        np.testing.assert_allclose(confidence, 1.0)
        assert oracle.rows >= 13
    else:   # one point per voxel speaks for the voxel: points sharing a voxel share a label
        assert oracle.rows == 1 and 0.5 < (label == red).mean() < 1.0


def test_georeferenced_clouds_keep_their_precision(tmp_path):
    """A room at UTM-like coordinates gives the model the same input as the room at the origin
    (float32 alone spaces y = 4e6 m by 0.25 m), and the output PLY keeps the coordinates."""
    from types import SimpleNamespace

    coord, _ = _box_room(n_per_face=2000)
    color = np.zeros((len(coord), 3), np.uint8)
    normal = np.tile([0.0, 0.0, 1.0], (len(coord), 1))
    survey = coord.astype(np.float64) + [500_000.25, 4_000_000.5, 31.0]
    near = predict._checked("room", coord.astype(np.float64), color, normal, "room.ply")
    far = predict._checked("room", survey, color, normal, "room.ply")
    predictor = SimpleNamespace(grid_size=0.02, config=SimpleNamespace(data=data_config.default_config()))
    (a,), inv_a = predict._single_view(predictor, near, 0)
    (b,), inv_b = predict._single_view(predictor, far, 0)
    np.testing.assert_array_equal(b["grid_coord"], a["grid_coord"])
    np.testing.assert_array_equal(inv_b, inv_a)
    np.testing.assert_allclose(b["feat"], a["feat"], atol=1e-6)
    label = np.zeros(len(coord), np.int32)
    ply_path, _ = predict.write_outputs(str(tmp_path), far, labels.S3DIS, label,
                                        np.ones(len(coord), np.float32))
    vertex = ply.read_ply(ply_path)["vertex"]
    np.testing.assert_array_equal(np.stack([vertex[k] for k in "xyz"], 1), survey)
