"""S3DIS preprocessing on a tiny dataset in the real layout: classes, instances, repair, align, normals."""

import os

import numpy as np
import pytest

from data_prep import s3dis, writer
from conftest import read_split

GRID = np.stack(np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11)), -1).reshape(-1, 2)


def write_object(root, room, name, points):
    d = os.path.join(root, room, "Annotations")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        f.writelines(" ".join(f"{v:.6f}" if i < 3 else str(int(v)) for i, v in enumerate(p)) + "\n"
                     for p in points)


def plane(z, rgb):
    return np.concatenate([GRID, np.full((len(GRID), 1), z), np.tile(rgb, (len(GRID), 1))], 1)


def write_dataset(tmp_path):
    """Areas 1 and 5 in miniature: an empty room, a malformed line, the control character; the root."""
    root = str(tmp_path / "Stanford3dDataset_v1.2")
    write_object(root, "Area_1/office_1", "floor_1.txt", plane(0.0, [10, 20, 30]))
    write_object(root, "Area_1/office_1", "ceiling_1.txt", plane(1.0, [200, 200, 200]))
    # two chair points share one 1 cm voxel
    write_object(root, "Area_1/office_1", "chair_1.txt",
                 [[0.405, 0.405, 0.505, 1, 2, 3], [0.407, 0.406, 0.506, 4, 5, 6]])
    write_object(root, "Area_1/office_1", "stairs_1.txt", [[0.2, 0.8, 0.3, 7, 8, 9]])
    os.makedirs(os.path.join(root, "Area_1", "hallway_1", "Annotations"))  # empty room
    write_object(root, "Area_1/WC_1", "wall_1.txt", [[0, 0, 0, 1, 1, 1]])
    with open(os.path.join(root, "Area_1", "WC_1", "Annotations", "wall_1.txt"), "a") as f:
        f.write("\n1.0 2.0 3.0 4 5\n")  # a blank line, then a line with 5 values
    with open(os.path.join(root, "Area_1", "Area_1_alignmentAngle.txt"), "w") as f:
        f.write("## Global alignment angle per disjoint space in Area_1 ##\noffice_1 180\nhallway_1 0\nWC_1 90\n")
    ceiling = plane(1.0, [50, 50, 50])
    write_object(root, "Area_5/office_19", "ceiling_1.txt", ceiling)
    write_object(root, "Area_5/office_19", "floor_1.txt", plane(0.0, [60, 60, 60]))
    path = os.path.join(root, "Area_5", "office_19", "Annotations", "ceiling_1.txt")
    lines = open(path, "rb").read().split(b"\n")
    lines[2] = b"0.200000 0.000000 1.0\x100000 50 50 50"  # the known corrupt line, in miniature
    open(path, "wb").write(b"\n".join(lines))
    with open(os.path.join(root, "Area_5", "Area_5_alignmentAngle.txt"), "w") as f:
        f.write("office_19 0\n")
    return root


@pytest.fixture
def raw(tmp_path):
    return write_dataset(tmp_path)


def test_load_room_classes_instances_normals(raw):
    room = s3dis.load_room("Area_1/office_1", raw, {}, align_angle=False)
    # objects in sorted file order: ceiling_1, chair_1, floor_1, stairs_1 (-> clutter)
    n = len(GRID)
    np.testing.assert_array_equal(room["segment"], [0] * n + [8, 8] + [1] * n + [12])
    np.testing.assert_array_equal(room["instance"], [0] * n + [1, 1] + [2] * n + [3])
    np.testing.assert_allclose(room["normal"][:n], np.tile([0, 0, -1], (n, 1)), atol=1e-6)  # ceiling: down
    np.testing.assert_allclose(room["normal"][n + 2:2 * n + 2], np.tile([0, 0, 1], (n, 1)), atol=1e-6)
    assert room["color"][n].tolist() == [1, 2, 3] and room["notes"] == []


def test_align_angle_hand_cases():
    coord = np.array([[0.0, 0.0, 1.0], [2.0, 1.0, 0.0]])  # bbox centre (1, 0.5)
    np.testing.assert_allclose(s3dis.align(coord, 180), [[2, 1, 1], [0, 0, 0]], atol=1e-12)  # theta = pi
    # angle 90 -> theta = 1.5 pi: (dx, dy) -> (dy, -dx) about the centre
    np.testing.assert_allclose(s3dis.align(coord, 90), [[0.5, 1.5, 1], [1.5, -0.5, 0]], atol=1e-12)
    np.testing.assert_allclose(s3dis.align(coord, 0), coord, atol=1e-12)  # theta = 2 pi


def test_cli_repairs_skips_and_shards(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    code = s3dis.main(["--raw", raw, "--out", out, "--areas", "Area_1,Area_5", "--align_angle",
                       "--workers", "1", "--no_progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "hallway_1/Annotations: empty room: no *.txt object files" in printed
    assert "wall_1.txt: line 3: expected 6 values (x y z r g b)" in printed
    assert "ceiling_1.txt: replaced 1 control character(s) with '0' (first on line 3)" in printed

    manifest, scenes = read_split(os.path.join(out, "Area_5"))
    assert manifest["notes"][0]["scene"] == "Area_5/office_19" and manifest["skipped"] == []
    office = scenes["Area_5/office_19"]
    assert office["origin_segment"].shape == (2 * len(GRID),)
    # the repaired point 103.0 -> "1.0000000" parses as 1.0: it stays on the ceiling plane
    assert np.isclose(office["coord"][:, 2], 1.0).sum() == len(GRID)

    manifest, scenes = read_split(os.path.join(out, "Area_1"))
    assert sorted(scenes) == ["Area_1/office_1"] and manifest["dataset"] == "S3DIS"
    assert manifest["align_angle"] is True
    assert {s["scene"] for s in manifest["skipped"]} == {"Area_1/hallway_1", "Area_1/WC_1"}
    office = scenes["Area_1/office_1"]
    assert len(office["coord"]) == 2 * len(GRID) + 2 and len(office["inverse"]) == 2 * len(GRID) + 3
    inv = office["inverse"]
    n = len(GRID)
    assert inv[n] == inv[n + 1]  # the two chair points share a site: the first one is kept
    assert office["color"][inv[n]].tolist() == [1, 2, 3]
    # angle 180 rotates about the bbox centre (0.5, 0.5): (x, y) -> (1 - x, 1 - y)
    np.testing.assert_allclose(office["coord"][inv[2 * n + 2]], [0.8, 0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(office["coord"][inv[n]], [0.595, 0.595, 0.505], atol=1e-6)


def test_bad_area_files_stop_before_any_work(raw, tmp_path, capsys):
    """Every missing alignment file in one message (with the flag that selects a subset), no traceback,
    nothing written; a malformed line is named with its file and line."""
    out = tmp_path / "out"
    assert s3dis.main(["--raw", raw, "--out", str(out), "--workers", "1", "--no_progress"]) == 2
    missing = ", ".join(os.path.join(raw, a, f"{a}_alignmentAngle.txt")
                        for a in ("Area_2", "Area_3", "Area_4", "Area_6"))
    assert capsys.readouterr().err.strip() == (f"error: missing inputs: {missing}; --areas selects a subset "
                                               f"of Area_1,Area_2,Area_3,Area_4,Area_5,Area_6")
    assert not out.exists()
    with open(os.path.join(raw, "Area_1", "Area_1_alignmentAngle.txt"), "a") as f:
        f.write("office_2 ninety\n")
    assert s3dis.main(["--raw", raw, "--out", str(out), "--areas", "Area_5,Area_1"]) == 2
    assert "Area_1_alignmentAngle.txt:5: expected '<room> <angle>'" in capsys.readouterr().err
    assert not out.exists()


def test_object_file_errors_name_file_and_line(tmp_path):
    """Broken annotation lines: the message names the file and the line; an empty file is a note."""
    cases = {"token.txt": ("1 2 3 4 5 6\n1 2 3O 4 5 6\n", "line 2: '3O' is not a number"),
             "nan.txt": ("1 2 3 4 5 6\n\n1 nan 3 4 5 6\n", "line 3: non-finite value 'nan'"),
             "colour.txt": ("1 2 3 4 5 256\n", "line 1: colour 256 outside 0..255")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(writer.SceneError) as err:
            s3dis.read_object(str(path))
        assert err.value.path == str(path) and err.value.reason == message
    (tmp_path / "empty.txt").write_text("")
    points, notes = s3dis.read_object(str(tmp_path / "empty.txt"))
    assert points.shape == (0, 6) and notes == [f"{tmp_path / 'empty.txt'}: empty object file (no points)"]


def test_empty_object_file_is_noted_in_the_manifest(raw, tmp_path):
    empty = os.path.join(raw, "Area_5", "office_19", "Annotations", "board_1.txt")
    open(empty, "w").close()
    out = str(tmp_path / "out")
    s3dis.main(["--raw", raw, "--out", out, "--areas", "Area_5", "--workers", "1", "--no_progress"])
    manifest, scenes = read_split(os.path.join(out, "Area_5"))
    assert {"scene": "Area_5/office_19",
            "note": f"{empty}: empty object file (no points): instance 0 has no points"} in manifest["notes"]
    assert 0 not in scenes["Area_5/office_19"]["instance"]  # board_1 sorts first: its id is unused
