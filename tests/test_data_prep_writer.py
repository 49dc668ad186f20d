"""The shard writer: voxelization against np.unique, field round trips, manifest, bad scenes, resume."""

import functools
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data_prep import writer
from ppt_jax.data import schema
from conftest import REPO, read_split

SCENES = [f"scene{i:02d}" for i in range(7)]


def make_raw(scene_id, num=300):
    """A deterministic random scene: points in a 10 cm cube, so 1 cm voxels hold several points."""
    rng = np.random.default_rng(int(scene_id[-2:]))
    normal = rng.normal(size=(num, 3))
    return {"coord": rng.uniform(-0.05, 0.05, (num, 3)).astype(np.float32) + np.float32(scene_id[-1]),
            "color": rng.integers(0, 256, (num, 3)).astype(np.uint8),
            "normal": (normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
            "segment": rng.integers(-1, 20, num), "instance": rng.integers(-1, 4, num)}


def load_broken(bad, scene_id):
    """make_raw, with the scenes named in `bad` broken the way the dict says."""
    raw = make_raw(scene_id)
    kind = bad.get(scene_id)
    if kind == "missing":
        raise writer.SceneError(f"/raw/{scene_id}/{scene_id}.aggregation.json", "file not found")
    if kind == "nan":
        raw["coord"][5, 1] = np.nan
    if kind == "label":
        raw["segment"][3] = 20
    if kind == "huge":
        raw["coord"][7, 0] = 1000.0  # 1 km: beyond GRID_BOUND voxels of 1 cm
    if kind == "empty":
        raw = {k: v[:0] for k, v in raw.items()}
    return raw


def load_interrupt(stop_at, scene_id):
    if scene_id == stop_at:
        raise KeyboardInterrupt
    return make_raw(scene_id)


def shard_bytes(split_dir):
    return {n: open(os.path.join(split_dir, n), "rb").read()
            for n in sorted(os.listdir(split_dir)) if n.startswith("shard-")}


def write(out, load_fn=make_raw, scenes=SCENES, **kw):
    kw = {"grid_size": 0.01, "scenes_per_shard": 3, "progress": False, **kw}
    return writer.write_split(str(out), "ScanNet", "val", scenes, load_fn, keep_full_res=True, **kw)


def test_voxelize_hand_case():
    raw = {"coord": np.array([[0.5, 0.2, 0.1], [0.1, 0.1, 0.1], [1.5, 0.0, 0.0], [0.9, 0.9, 0.9],
                              [0.0, 0.0, 1.2]], np.float32),
           "color": np.arange(15, dtype=np.uint8).reshape(5, 3), "normal": np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]],
           "segment": np.array([1, 2, 3, 4, -1]), "instance": np.array([0, 1, -1, 2, 3])}
    vox = writer.voxelize(raw, 1.0, keep_full_res=True)
    # voxels: points 0,1,3 -> (0,0,0) keep point 0; point 4 -> (0,0,1); point 2 -> (1,0,0)
    np.testing.assert_array_equal(vox["grid_coord"], [[0, 0, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(vox["segment"], [1, -1, 3])
    np.testing.assert_array_equal(vox["coord"], raw["coord"][[0, 4, 2]])
    np.testing.assert_array_equal(vox["color"], raw["color"][[0, 4, 2]])
    np.testing.assert_array_equal(vox["instance"], [0, 3, -1])
    np.testing.assert_array_equal(vox["inverse"], [0, 0, 2, 0, 1])
    np.testing.assert_array_equal(vox["origin_segment"], raw["segment"])
    assert "inverse" not in writer.voxelize(raw, 1.0, keep_full_res=False)


def test_voxelize_matches_np_unique():
    raw = make_raw("scene03", 5000)
    vox = writer.voxelize(raw, 0.01, keep_full_res=True)
    coord = raw["coord"].astype(np.float64)
    grid = np.floor((coord - coord.min(0)) / 0.01).astype(np.int64)
    uniq, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    np.testing.assert_array_equal(vox["grid_coord"], uniq)  # lexicographic = grid-key order
    np.testing.assert_array_equal(vox["coord"], raw["coord"][first])
    np.testing.assert_array_equal(vox["normal"], raw["normal"][first])
    np.testing.assert_array_equal(vox["inverse"], inverse.ravel())
    # every stored site is a real point, and each point's site lies in the point's voxel
    np.testing.assert_array_equal(vox["grid_coord"][vox["inverse"]], grid)


def test_round_trip_and_manifest(tmp_path):
    summary = write(tmp_path)
    assert summary.ok and summary.num_written == 7 and summary.num_shards == 3
    split_dir = tmp_path / "val"
    manifest, scenes = read_split(split_dir)
    assert sorted(scenes) == SCENES
    for sid in SCENES:
        expect = writer.voxelize(make_raw(sid), 0.01, keep_full_res=True)
        got = scenes[sid]
        assert got["dataset"] == "ScanNet" and got["schema_version"] == schema.SCHEMA_VERSION
        assert got["grid_size"] == pytest.approx(0.01)
        for name in (*schema.SITE_FIELDS, *schema.POINT_FIELDS):
            assert got[name].dtype == expect[name].dtype, name
            np.testing.assert_array_equal(got[name], expect[name], err_msg=name)
    assert manifest["dataset"] == "ScanNet" and manifest["split"] == "val"
    assert manifest["label_names"][0] == "wall" and len(manifest["label_names"]) == 20
    assert [s["file"] for s in manifest["shards"]] == [f"shard-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert [s["num_scenes"] for s in manifest["shards"]] == [3, 3, 1]
    for shard in manifest["shards"]:
        data = open(split_dir / shard["file"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    entry = manifest["scenes"][4]
    assert entry == {"scene": "scene04", "num_points": 300, "num_sites": len(scenes["scene04"]["coord"]),
                     "shard": "shard-00001-of-00003.tfrecord"}
    assert manifest["num_points"] == 7 * 300 and manifest["skipped"] == []


def test_bad_scenes_skipped_and_reported(tmp_path):
    write(tmp_path / "clean")
    bad = {"scene01": "missing", "scene02": "nan", "scene03": "huge", "scene04": "label", "scene05": "empty"}
    summary = write(tmp_path / "bad", functools.partial(load_broken, bad))
    assert not summary.ok and summary.num_written == 2
    reasons = {s["scene"]: (s["file"], s["reason"]) for s in summary.skipped}
    assert reasons["scene01"] == ("/raw/scene01/scene01.aggregation.json", "file not found")
    assert reasons["scene02"] == ("scene02", "1 of 300 points have non-finite coord (NaN or inf)")
    assert "labels out of range: found [-1, 20], valid -1..19" in reasons["scene04"][1]
    assert reasons["scene05"][1] == "empty scene (no points)"
    assert reasons["scene03"][1].startswith("scene extent [99")
    assert reasons["scene03"][1].endswith("m exceeds 65535 voxels of 0.01 m")
    assert "5 skipped" in summary.line()
    manifest, scenes = read_split(tmp_path / "bad" / "val")
    assert sorted(scenes) == ["scene00", "scene06"]
    assert manifest["skipped"] == summary.skipped
    for sid in scenes:  # the good scenes of the damaged shards are intact
        np.testing.assert_array_equal(scenes[sid]["coord"], writer.voxelize(make_raw(sid), 0.01, False)["coord"])
    name = "shard-00002-of-00003.tfrecord"  # the shard without broken scenes is byte-identical
    assert shard_bytes(tmp_path / "bad" / "val")[name] == shard_bytes(tmp_path / "clean" / "val")[name]
    # a re-run retries the skipped scenes (still broken: reported again, the same bytes)
    before = shard_bytes(tmp_path / "bad" / "val")
    again = write(tmp_path / "bad", functools.partial(load_broken, bad))
    assert again.shards_reused == 1 and again.scenes_retried == 5 and again.skipped == summary.skipped
    assert shard_bytes(tmp_path / "bad" / "val") == before


def load_counted(bad, calls, scene_id):
    calls.append(scene_id)
    return load_broken(bad, scene_id)


def test_skipped_scenes_are_retried_on_rerun(tmp_path):
    """A rerun loads only the scenes skipped before (their input may have been fixed) and keeps the rest."""
    write(tmp_path / "clean")
    bad, calls = {"scene01": "missing", "scene04": "label"}, []
    first = write(tmp_path / "run", functools.partial(load_counted, bad, calls))
    assert [s["scene"] for s in first.skipped] == ["scene01", "scene04"] and len(calls) == 7
    del bad["scene01"], calls[:]  # the user repairs one scene
    summary = write(tmp_path / "run", functools.partial(load_counted, bad, calls))
    assert calls == ["scene01", "scene04"] and summary.scenes_retried == 2
    assert [s["scene"] for s in summary.skipped] == ["scene04"] and summary.num_written == 6
    clean, run = shard_bytes(tmp_path / "clean" / "val"), shard_bytes(tmp_path / "run" / "val")
    name = "shard-00000-of-00003.tfrecord"
    assert run[name] == clean[name]
    del bad["scene04"], calls[:]
    summary = write(tmp_path / "run", functools.partial(load_counted, bad, calls))
    assert calls == ["scene04"] and summary.ok and summary.shards_reused == 2
    assert shard_bytes(tmp_path / "run" / "val") == clean
    manifest_clean = json.load(open(tmp_path / "clean" / "val" / schema.MANIFEST_NAME))
    assert json.load(open(tmp_path / "run" / "val" / schema.MANIFEST_NAME)) == manifest_clean


def test_interrupt_then_resume_gives_identical_bytes(tmp_path):
    write(tmp_path / "clean")
    clean = shard_bytes(tmp_path / "clean" / "val")
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "run", functools.partial(load_interrupt, "scene04"))
    split_dir = tmp_path / "run" / "val"
    assert list(shard_bytes(split_dir)) == ["shard-00000-of-00003.tfrecord"]  # only finished shards
    assert not os.path.exists(split_dir / schema.MANIFEST_NAME)
    first = os.stat(split_dir / "shard-00000-of-00003.tfrecord").st_mtime_ns
    summary = write(tmp_path / "run")
    assert summary.shards_reused == 1 and summary.num_written == 7
    assert os.stat(split_dir / "shard-00000-of-00003.tfrecord").st_mtime_ns == first
    assert shard_bytes(split_dir) == clean
    manifest_clean = json.load(open(tmp_path / "clean" / "val" / schema.MANIFEST_NAME))
    assert json.load(open(split_dir / schema.MANIFEST_NAME)) == manifest_clean


@pytest.mark.slow
def test_hard_kill_in_subprocess_then_resume(tmp_path):
    """os._exit after 4 scenes (mid-shard 1, with workers): re-run equals a clean single-worker run."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{REPO!r}, {os.path.dirname(__file__)!r}]
        import test_data_prep_writer as t
        from data_prep import writer
        def load(scene_id):
            if scene_id == "scene04":
                os._exit(3)
            return t.make_raw(scene_id)
        t.write({str(tmp_path / 'run')!r}, load)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    split_dir = tmp_path / "run" / "val"
    assert list(shard_bytes(split_dir)) == ["shard-00000-of-00003.tfrecord"]
    summary = write(tmp_path / "run", workers=2)
    assert summary.shards_reused == 1
    write(tmp_path / "clean")
    assert shard_bytes(split_dir) == shard_bytes(tmp_path / "clean" / "val")


def test_changed_settings_and_damaged_shards_are_rewritten(tmp_path):
    write(tmp_path)
    split_dir = tmp_path / "val"
    with open(split_dir / "shard-00001-of-00003.tfrecord", "ab") as f:
        f.write(b"x")  # a damaged shard fails its checksum
    (split_dir / "shard-00002-of-00003.tfrecord.tmp").write_bytes(b"partial")
    assert write(tmp_path).shards_reused == 2
    assert not os.path.exists(split_dir / "shard-00002-of-00003.tfrecord.tmp")
    assert write(tmp_path, grid_size=0.02).shards_reused == 0  # settings are part of the fingerprint
    assert write(tmp_path, grid_size=0.02, manifest_extra={"align_angle": True}).shards_reused == 0
    summary = write(tmp_path, grid_size=0.02, manifest_extra={"align_angle": True})
    assert summary.shards_reused == 3
    assert schema.read_manifest(str(split_dir))["align_angle"] is True
    summary = write(tmp_path, scenes_per_shard=4)
    assert summary.num_shards == 2 and list(shard_bytes(split_dir)) == [
        "shard-00000-of-00002.tfrecord", "shard-00001-of-00002.tfrecord"]
    assert write(tmp_path, scenes_per_shard=4, overwrite=True).shards_reused == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="duplicate scene ids: \\['scene01'\\]"):
        write(tmp_path, scenes=["scene01", "scene00", "scene01"])
    with pytest.raises(ValueError, match="grid_size must be > 0"):
        write(tmp_path, grid_size=0.0)
    with pytest.raises(ValueError, match="no label list"):
        writer.write_split(str(tmp_path), "Foo", "train", SCENES, make_raw)
    with pytest.raises(RuntimeError, match="ScanNet scene scene00: unexpected KeyError"):
        write(tmp_path, lambda s: {}["coord"])


def load_slow(marker_dir, scene_id):
    """Say which process took the scene, then work on it for a minute (long enough to be killed)."""
    import time
    open(os.path.join(marker_dir, f"{scene_id}.{os.getpid()}"), "w").close()
    time.sleep(60)
    return make_raw(scene_id)


def _descendants(pid):
    """PIDs of the live (non-zombie) processes below `pid`, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry)] = int(stat[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pids):
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process tree from /proc")
def test_sigkill_of_parent_leaves_no_worker(tmp_path):
    """SIGKILL of a --workers 2 run: its workers and multiprocessing's resource tracker end with it."""
    import signal
    import time
    marker = tmp_path / "started"
    marker.mkdir()
    script = textwrap.dedent(f"""
        import functools, sys
        sys.path[:0] = [{REPO!r}, {os.path.dirname(__file__)!r}]
        import test_data_prep_writer as t
        t.write({str(tmp_path / 'run')!r}, functools.partial(t.load_slow, {str(marker)!r}), workers=2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(os.listdir(marker)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(os.listdir(marker)) == 2, "the two workers never started"
        children = _descendants(proc.pid)
        workers = {int(name.rsplit(".", 1)[1]) for name in os.listdir(marker)}
        assert workers <= children and len(children) >= 3  # + the resource tracker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while _alive(children) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(children), f"processes outlived the killed run: {sorted(_alive(children))}"
    finally:
        for p in _alive(_descendants(proc.pid) | (children if "children" in locals() else set())):
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
