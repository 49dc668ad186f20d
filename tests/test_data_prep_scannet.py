"""ScanNet preprocessing on a tiny dataset in the real layout, checked against hand-computed values."""

import json
import os

import numpy as np
import pytest

from data_prep import scannet
from ppt_jax import ply
from conftest import read_split

# 7 vertices: a unit square in z=0 (two triangles), a triangle in x=0, a vertex in no face (v5) and a
# vertex v6 in v0's 1 cm voxel, also in no face.
COORD = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [0.004, 0.003, 0]],
                 np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4]])
# raw cross products: (0,0,1), (0,0,1), (1,0,0); a vertex normal is their normalised sum
NORMAL = np.array([[1 / 5 ** .5, 0, 2 / 5 ** .5], [0, 0, 1], [0, 0, 1], [2 ** -.5, 0, 2 ** -.5],
                   [1, 0, 0], [0, 0, 0], [0, 0, 0]], np.float32)
SEG_INDICES = [10, 10, 11, 11, 12, 13, 13]
GROUPS = [{"id": 0, "label": "wall", "segments": [10]}, {"id": 1, "label": "chair", "segments": [11, 12]},
          {"id": 2, "label": "lamp", "segments": [12]}]  # the later group overwrites segment 12
SEGMENT20 = [0, 0, 4, 4, -1, -1, -1]  # wall=nyu40 1 -> 0, chair=nyu40 5 -> 4, lamp=nyu40 35 -> ignore
SEGMENT200 = [0, 0, 1, 1, 24, -1, -1]  # wall id 1 -> 0, chair id 2 -> 1, lamp id 28 -> 24
INSTANCE = [0, 0, 1, 1, 2, -1, -1]
TSV = ("id\traw_category\tcategory\tcount\tnyu40id\n1\twall\twall\t8277\t1\n2\tchair\tchair\t4646\t5\n"
       "28\tlamp\tlamp\t500\t35\n3\tchair\tchair\t1\t2\n")  # a repeated category: the first row wins


def write_scene(root, folder, sid, labelled=True, coord=COORD):
    d = os.path.join(root, folder, sid)
    os.makedirs(d)
    color = (np.arange(21).reshape(7, 3) * 10).astype(np.uint8)
    vertex = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2], "red": color[:, 0],
              "green": color[:, 1], "blue": color[:, 2], "alpha": np.full(7, 255, np.uint8)}
    ply.write_ply(os.path.join(d, f"{sid}_vh_clean_2.ply"), vertex, FACES)
    if labelled:
        with open(os.path.join(d, f"{sid}_vh_clean_2.0.010000.segs.json"), "w") as f:
            json.dump({"sceneId": sid, "segIndices": SEG_INDICES}, f)
        with open(os.path.join(d, f"{sid}.aggregation.json"), "w") as f:
            json.dump({"sceneId": sid, "segGroups": GROUPS}, f)
    return d


def write_dataset(tmp_path):
    """The tiny ScanNet in its layout: scans with every kind of breakage, one test scan; returns the root."""
    root = str(tmp_path / "raw")
    write_scene(root, "scans", "scene0000_00")
    bad = write_scene(root, "scans", "scene0001_00")
    ply_path = os.path.join(bad, "scene0001_00_vh_clean_2.ply")
    data = open(ply_path, "rb").read()
    open(ply_path, "wb").write(data[:-20])  # truncated mesh
    write_scene(root, "scans", "scene0002_00")
    os.remove(os.path.join(write_scene(root, "scans", "scene0003_00"), "scene0003_00.aggregation.json"))
    nan = COORD.copy()
    nan[2, 0] = np.nan
    write_scene(root, "scans", "scene0004_00", coord=nan)
    write_scene(root, "scans_test", "scene0100_00", labelled=False)
    faceless = write_scene(root, "scans", "scene0006_00")
    vertex = ply.read_ply(os.path.join(faceless, "scene0006_00_vh_clean_2.ply"))["vertex"]
    ply.write_ply(os.path.join(faceless, "scene0006_00_vh_clean_2.ply"), {n: vertex[n] for n in vertex.dtype.names})
    with open(os.path.join(root, scannet.LABEL_TABLE), "w") as f:
        f.write(TSV)
    for split, ids in {"train": ["scene0000_00", "scene0001_00"], "test": ["scene0100_00"],
                       "val": ["scene0002_00", "scene0003_00", "scene0004_00", "scene0005_00", "scene0006_00"]}.items():
        with open(os.path.join(root, f"scannetv2_{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return root


@pytest.fixture
def raw(tmp_path):
    return write_dataset(tmp_path)


def test_label_table(raw):
    t20 = scannet.read_label_table(os.path.join(raw, scannet.LABEL_TABLE), 20)
    assert t20 == {"wall": 0, "chair": 4, "lamp": -1}
    t200 = scannet.read_label_table(os.path.join(raw, scannet.LABEL_TABLE), 200)
    assert t200 == {"wall": 0, "chair": 1, "lamp": 24}


def test_load_scene_hand_computed(raw):
    table = scannet.read_label_table(os.path.join(raw, scannet.LABEL_TABLE), 20)
    scene = scannet.load_scene("scene0002_00", raw, table, labelled=True)
    np.testing.assert_allclose(scene["normal"], NORMAL, atol=1e-6)
    np.testing.assert_array_equal(scene["segment"], SEGMENT20)
    np.testing.assert_array_equal(scene["instance"], INSTANCE)
    np.testing.assert_array_equal(scene["coord"], COORD)
    assert scene["color"].dtype == np.uint8 and scene["color"][6].tolist() == [180, 190, 200]


def test_cli_shards_and_broken_scenes(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    code = scannet.main(["--raw", raw, "--out", out, "--workers", "1", "--no_progress"])
    printed = capsys.readouterr().out
    assert code == 1
    bad_ply = os.path.join(raw, "scans", "scene0001_00", "scene0001_00_vh_clean_2.ply")
    assert (f"skipped scene0001_00: {bad_ply}: unreadable PLY: truncated PLY (element 'face': row 1: "
            "property 'vertex_indices': early end-of-file)") in printed
    assert "scene0003_00.aggregation.json: file not found" in printed
    nan_ply = os.path.join(raw, "scans", "scene0004_00", "scene0004_00_vh_clean_2.ply")
    assert f"skipped scene0004_00: {nan_ply}: 1 of 7 points have non-finite coord" in printed

    assert f"skipped scene0005_00: {os.path.join(raw, 'scans', 'scene0005_00')}: scene folder not found" in printed
    assert "scene0006_00_vh_clean_2.ply: PLY has no face element (vertex normals need the faces)" in printed

    manifest, scenes = read_split(os.path.join(out, "val"))
    assert sorted(scenes) == ["scene0002_00"] and manifest["dataset"] == "ScanNet"
    assert {s["scene"] for s in manifest["skipped"]} == {f"scene000{i}_00" for i in (3, 4, 5, 6)}
    val = scenes["scene0002_00"]
    assert len(val["coord"]) == 6 and manifest["scenes"][0]["num_points"] == 7  # v6 shares v0's voxel
    inv = val["inverse"]
    assert inv[6] == inv[0]
    np.testing.assert_array_equal(val["origin_segment"], SEGMENT20)
    np.testing.assert_array_equal(val["segment"][inv[:6]], SEGMENT20[:6])
    np.testing.assert_array_equal(val["instance"][inv[:6]], INSTANCE[:6])
    np.testing.assert_allclose(val["normal"][inv[:6]], NORMAL[:6], atol=1e-6)
    np.testing.assert_array_equal(val["grid_coord"][inv[:6]], (COORD[:6] * 100).astype(int))

    manifest, scenes = read_split(os.path.join(out, "train"))
    assert sorted(scenes) == ["scene0000_00"] and manifest["skipped"][0]["scene"] == "scene0001_00"
    assert len(scenes["scene0000_00"]["inverse"]) == 0  # train: no full-resolution fields
    _, scenes = read_split(os.path.join(out, "test"))
    assert (scenes["scene0100_00"]["origin_segment"] == -1).all() and len(scenes["scene0100_00"]["inverse"]) == 7


def test_segment200(raw, tmp_path):
    out = str(tmp_path / "out200")
    assert scannet.main(["--raw", raw, "--out", out, "--splits", "test", "--segment200",
                         "--workers", "1", "--no_progress"]) == 0
    manifest, _ = read_split(os.path.join(out, "test"))
    assert manifest["dataset"] == "ScanNet200" and len(manifest["label_names"]) == 200
    table = scannet.read_label_table(os.path.join(raw, scannet.LABEL_TABLE), 200)
    scene = scannet.load_scene("scene0002_00", raw, table, labelled=True)
    np.testing.assert_array_equal(scene["segment"], SEGMENT200)


def test_bad_meta_stops_before_any_work(raw, tmp_path, capsys):
    """Missing split lists: all named in one message with the flags to use, nothing written (the
    default splits used to fail with a traceback after writing train and val)."""
    out = tmp_path / "o"
    os.remove(os.path.join(raw, "scannetv2_val.txt"))
    os.remove(os.path.join(raw, "scannetv2_test.txt"))
    assert scannet.main(["--raw", raw, "--out", str(out), "--workers", "1", "--no_progress"]) == 2
    missing = f"{os.path.join(raw, 'scannetv2_val.txt')}, {os.path.join(raw, 'scannetv2_test.txt')}"
    assert capsys.readouterr().err.strip() == (
        f"error: missing inputs: {missing}; --meta DIR names the folder of the label table and split lists "
        f"(default: --raw), --splits selects a subset of train,val,test")
    assert not out.exists()
    with open(os.path.join(raw, scannet.LABEL_TABLE), "w") as f:
        f.write("id\traw_category\n1\twall\n")
    assert scannet.main(["--raw", raw, "--out", str(out), "--splits", "train"]) == 2
    assert capsys.readouterr().err.strip().endswith("labels.combined.tsv: missing column 'nyu40id'")
    assert scannet.main(["--raw", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"--raw {tmp_path / 'nowhere'}: not a directory" in capsys.readouterr().err
    assert not out.exists()


def test_malformed_annotation_skips_the_scene(raw, tmp_path, capsys):
    """A segGroup without "label" (or with a non-list "segments"): that scene is skipped and reported,
    the split still gets its manifest and its other scenes."""
    agg = os.path.join(raw, "scans", "scene0002_00", "scene0002_00.aggregation.json")
    with open(agg, "w") as f:
        json.dump({"segGroups": [GROUPS[0], {"id": 1, "segments": [11]}]}, f)
    segs = os.path.join(raw, "scans", "scene0000_00", "scene0000_00.aggregation.json")
    with open(segs, "w") as f:
        json.dump({"segGroups": [{"id": 0, "label": "wall", "segments": 10}]}, f)
    out = str(tmp_path / "out")
    assert scannet.main(["--raw", raw, "--out", out, "--splits", "train,val", "--workers", "1",
                         "--no_progress"]) == 1
    printed = capsys.readouterr().out
    assert f"skipped scene0002_00: {agg}: segGroups[1] (id 1) has no 'label'" in printed
    assert f"skipped scene0000_00: {segs}: segGroups[0] (id 0): 'segments' must be a list of integers" in printed
    manifest, _ = read_split(os.path.join(out, "val"))
    assert "scene0002_00" in {s["scene"] for s in manifest["skipped"]}
