"""data_prep.beam on the DirectRunner writes the local writer's output byte for byte, retries included."""

import functools
import os
import re

import pytest

pytest.importorskip("apache_beam", reason="apache-beam is not installed (pip install -r requirements-beam.txt)")

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystem import FileMetadata  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

import test_data_prep_s3dis  # noqa: E402
import test_data_prep_scannet  # noqa: E402
import test_data_prep_structured3d  # noqa: E402
from data_prep import beam as data_prep_beam  # noqa: E402
from data_prep import s3dis, scannet, structured3d, synthetic, writer  # noqa: E402
from test_data_prep_writer import SCENES, load_broken, read_split  # noqa: E402

# every bundle is run twice, the first run's output thrown away: what a retried bundle does to files
RETRY = ["--direct_runner_bundle_repeat", "1", "--direct_num_workers", "2", "--direct_running_mode", "multi_threading"]


class UrlFileSystem(LocalFileSystem):
    """Local files behind the URL scheme testfs://: the path handling of gs:// or s3://, with no bucket."""

    @classmethod
    def scheme(cls):
        return "testfs"

    @staticmethod
    def _local(path):
        return path.removeprefix("testfs://")

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *paths])

    def _list(self, dir_or_prefix):
        for meta in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata("testfs://" + meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def exists(self, path):
        return super().exists(self._local(path))

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def rename(self, sources, destinations):
        super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def delete(self, paths):
        super().delete([self._local(p) for p in paths])


def files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def lines(text, root):
    """Printed lines with the output root and the timings taken out."""
    return [line.replace(root, "OUT").rsplit(", ", 1)[0] if " s -> " in line else line.replace(root, "OUT")
            for line in text.splitlines() if not line.startswith("note: one ")]


# dataset -> (module, the data tests' raw fixture, flags, whether --raw can be a URL, a line printed once)
RAW = {
    "scannet": (scannet, test_data_prep_scannet.write_dataset, [], False,
                "skipped scene0003_00: "),  # and 4 more broken scans, over train and val
    "s3dis": (s3dis, test_data_prep_s3dis.write_dataset, ["--areas", "Area_1,Area_5", "--align_angle"], False,
              "repaired Area_5/office_19: "),
    "structured3d": (structured3d, test_data_prep_structured3d.write_dataset, [], True,
                     "skipped scene_03250/room_2: Structured3D/scene_03250/2D_rendering/2: empty room"),
}


@pytest.mark.parametrize("dataset", RAW)
def test_raw_fixtures_same_bytes_and_reports(dataset, tmp_path, capsys):
    """Output (and Structured3D's zips) behind a URL scheme as on a bucket; every bundle run twice."""
    module, write_dataset, flags, url_raw, once = RAW[dataset]
    raw, local, beamed = write_dataset(tmp_path), str(tmp_path / "local"), str(tmp_path / "beam")
    local_code = module.main(["--raw", raw, "--out", local, *flags, "--workers", "1", "--no_progress"])
    local_out = capsys.readouterr().out
    structured3d.archive.cache_clear()
    code = data_prep_beam.main(["--dataset", dataset, "--raw", "testfs://" + raw if url_raw else raw,
                                "--out", "testfs://" + beamed, *flags, *RETRY])
    beam_out = capsys.readouterr().out.replace("testfs://", "")  # the zips' URLs in reasons and notes

    assert code == local_code == 1
    local_files, beam_files = files(local), files(beamed)
    assert beam_files.keys() == local_files.keys()  # shards, manifests, progress records: nothing else
    for name, data in local_files.items():
        assert (beam_files[name].replace(b"testfs://", b"") if url_raw else beam_files[name]) == data, name
    assert lines(beam_out, beamed) == lines(local_out, local)  # repairs, summaries, skips: once each
    assert beam_out.count(once) == 1
    assert f"note: one DirectRunner job wrote {local_out.count(' s -> ')} split(s) in " in beam_out
    # the local command takes a Beam folder as its own: clean shards reused, skipped scenes retried
    structured3d.archive.cache_clear()
    module.main(["--raw", raw, "--out", beamed, *flags, "--workers", "1", "--no_progress"])
    assert re.search(r"shards \([1-9]\d* reused", capsys.readouterr().out)
    assert files(beamed) == local_files


def test_synthetic_domains_same_bytes(tmp_path, capsys):
    flags = ["--scenes", "3,2,1", "--val_scenes", "1,1,1", "--density", "0.01", "--scenes_per_shard", "2"]
    synthetic.main(["--out", str(tmp_path / "local"), *flags])
    assert data_prep_beam.main(["--dataset", "synthetic", "--out", str(tmp_path / "beam"), *flags, *RETRY]) == 0
    local = {k: v for k, v in files(tmp_path / "local").items() if not k.endswith(synthetic._SETTINGS_NAME)}
    assert files(tmp_path / "beam") == local and len(local) == 6 * 3 + 2  # Structured3D/train: 2 shards
    assert "S3DIS/val: 1/1 scenes in 1 shards (0 reused)" in capsys.readouterr().out


def test_failed_attempt_retried_without_duplicates(tmp_path, monkeypatch):
    """A bundle that dies after its shard is in place (before the record) is redone; nothing doubles."""
    bad = {"scene04": "nan"}
    load = functools.partial(load_broken, bad)
    kw = {"dataset": "ScanNet", "split": "val", "scene_ids": SCENES, "load_fn": load, "keep_full_res": True,
          "scenes_per_shard": 3}
    writer.write_split(str(tmp_path / "local"), progress=False, **kw)
    stale = tmp_path / "beam" / "val" / "shard-00000-of-00009.tfrecord"  # of an earlier run: 9 shards
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    rename, failed = FileSystems.rename, []

    def flaky_rename(sources, destinations):
        if destinations[0].endswith(".tfrecord.json") and not failed:
            failed.append(destinations[0])
            raise OSError("worker lost")
        rename(sources, destinations)
    monkeypatch.setattr(FileSystems, "rename", flaky_rename)
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])  # retries a failed bundle
    with beam.Pipeline(options=options) as pipeline:
        data_prep_beam.write_split(pipeline, str(tmp_path / "beam"), **kw)
    assert failed and files(tmp_path / "beam") == files(tmp_path / "local")  # no .tmp, no stale shard
    manifest, scenes = read_split(tmp_path / "beam" / "val")
    assert [s["scene"] for s in manifest["scenes"]] == [s for s in SCENES if s not in bad] == sorted(scenes)
    assert [s["scene"] for s in manifest["skipped"]] == ["scene04"]


def test_wrong_flags_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        data_prep_beam.main(["--dataset", "synthetic", "--out", str(tmp_path), "--runer", "DirectRunner"])
    assert "unrecognized arguments (neither data_prep nor Beam options): --runer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_prep_beam.main(["--dataset", "scannet", "--out", str(tmp_path)])
    assert "the following arguments are required: --raw" in capsys.readouterr().err
    (tmp_path / "ScanNet" / "train").mkdir(parents=True)
    (tmp_path / "ScanNet" / "train" / "manifest.json").write_text("{}")  # of an earlier run: kept
    with pytest.raises(SystemExit):
        data_prep_beam.main(["--dataset", "synthetic", "--out", str(tmp_path), "--scenes_per_shard", "0"])
    assert "scenes_per_shard must be >= 1, got 0" in capsys.readouterr().err
    assert os.listdir(tmp_path / "ScanNet" / "train") == ["manifest.json"]
