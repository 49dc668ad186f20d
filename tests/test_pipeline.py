"""The tf.data pipeline on tiny shards written with schema.encode_scene: shapes, determinism, resume,
host split, ratio schedule, Mix3D, eval inverse maps and test-time fragments."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ppt_jax import labels
from ppt_jax.data import config as data_config
from ppt_jax.data import pipeline, records, schedule, schema

GRID = 0.01  # stored grid of the shards


def _lattice_points(rng, shape, label_fn, per_voxel=3, jitter=0.004):
    """Points near the centres of 2 cm voxels on a lattice of `shape`, labelled per voxel.

    Anchor points at ±jitter around the extreme voxels' centres make CenterShift a lattice
    translation; the other points stay 1 mm inside them, so eval voxels = lattice voxels.
    """
    cells = np.argwhere(rng.random(shape) < 0.5)
    cells = np.concatenate([[[0, 0, 0]], cells, [np.array(shape) - 1]])
    idx = np.repeat(cells, per_voxel, axis=0)
    coord = (idx + 0.5) * 0.02 + rng.uniform(-jitter + 0.001, jitter - 0.001, idx.shape)
    coord[:per_voxel] = (idx[:per_voxel] + 0.5) * 0.02 - jitter  # x, y, z minimum
    coord[-per_voxel:] = (idx[-per_voxel:] + 0.5) * 0.02 + jitter  # x, y maximum
    return coord.astype(np.float32), label_fn(idx).astype(np.int32)


def _store(coord, color, normal, segment, full_res):
    """The first point of each 1 cm voxel in grid-key order (what data_prep writes)."""
    grid = np.floor((coord.astype(np.float64) - coord.min(0)) / GRID).astype(np.int64)
    key = schema.grid_key(grid)
    order = np.argsort(key, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    sites = order[first]
    scene = {"coord": coord[sites], "color": color[sites], "normal": normal[sites],
             "grid_coord": grid[sites].astype(np.int32), "segment": segment[sites],
             "instance": np.full(len(sites), -1, np.int32)}
    if full_res:
        inverse = np.empty(len(order), np.int32)
        inverse[order] = np.cumsum(first) - 1
        scene.update(inverse=inverse, origin_segment=segment)
    return scene


def _make_scene(rng, dataset, name, shape, full_res=False):
    num_classes = labels.num_classes(dataset)
    offset = rng.integers(num_classes)
    coord, segment = _lattice_points(rng, shape,
                                     lambda i: (i[:, 0] + 3 * i[:, 1] + 7 * i[:, 2] + offset) %
                                     num_classes)
    coord += rng.uniform(-5, 5, 3).astype(np.float32)
    normal = rng.standard_normal(coord.shape).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    color = rng.integers(0, 256, coord.shape).astype(np.uint8)
    scene = _store(coord, color, normal, segment, full_res)
    return {**scene, "dataset": dataset, "scene": name, "grid_size": GRID}


def write_split(root, dataset, num_scenes, per_shard=3, shape=(24, 20, 12), full_res=False, seed=0):
    """A split directory as data_prep writes it: shards of `per_shard` scenes and a manifest."""
    split_dir = os.path.join(root, dataset)
    os.makedirs(split_dir)
    rng = np.random.default_rng(seed)
    scenes = [_make_scene(rng, dataset, f"{dataset}_{i:03d}", shape, full_res)
              for i in range(num_scenes)]
    groups = [scenes[i:i + per_shard] for i in range(0, num_scenes, per_shard)]
    shards = []
    for i, group in enumerate(groups):
        name = schema.SHARD_PATTERN.format(index=i, count=len(groups))
        with tf.io.TFRecordWriter(os.path.join(split_dir, name)) as w:
            for scene in group:
                w.write(schema.encode_scene(scene))
        shards.append({"file": name, "num_scenes": len(group)})
    with open(os.path.join(split_dir, schema.MANIFEST_NAME), "w") as f:
        json.dump({"schema_version": schema.SCHEMA_VERSION, "dataset": dataset, "split": "train",
                   "grid_size": GRID, "num_scenes": num_scenes, "shards": shards}, f)
    return split_dir, scenes


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    sizes = {labels.STRUCTURED3D: 8, labels.SCANNET: 5, labels.S3DIS: 4}
    return {name: write_split(root, name, n, seed=i)[0] for i, (name, n) in enumerate(sizes.items())}


def _config(splits, **overrides):
    cfg = data_config.default_config()
    cfg.train_dirs = dict(splits)
    cfg.batch_size = 2
    cfg.num_sites = 1024
    cfg.num_parallel_calls = 2
    cfg.eval_num_sites = 4096
    cfg.eval_num_points = 16384
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_records_read_every_scene_by_position(tmp_path):
    split_dir, scenes = write_split(str(tmp_path), labels.SCANNET, 4, full_res=True)
    index = records.SceneIndex(split_dir)
    assert len(index) == 4 and index.dataset == labels.SCANNET
    for i, scene in enumerate(scenes):
        got = index.read(i)
        for k in (*schema.SITE_FIELDS, *schema.POINT_FIELDS):
            np.testing.assert_array_equal(got[k], scene[k])
        assert got["scene"] == scene["scene"] and got["dataset"] == labels.SCANNET


def test_records_report_bad_shards(tmp_path):
    split_dir, _ = write_split(str(tmp_path), labels.S3DIS, 4)
    with open(os.path.join(split_dir, schema.MANIFEST_NAME)) as f:
        manifest = json.load(f)
    shard = os.path.join(split_dir, manifest["shards"][0]["file"])
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) - 100])
    with pytest.raises(ValueError, match="shard-00000-of-00002.tfrecord.*truncated"):
        records.SceneIndex(split_dir)
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="shard-00000-of-00002.tfrecord"):
        records.SceneIndex(split_dir)
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        records.SceneIndex(str(tmp_path))


def _first_shard(split_dir):
    with open(os.path.join(split_dir, schema.MANIFEST_NAME)) as f:
        manifest = json.load(f)
    return manifest, os.path.join(split_dir, manifest["shards"][0]["file"])


def _set_manifest(split_dir, manifest):
    with open(os.path.join(split_dir, schema.MANIFEST_NAME), "w") as f:
        json.dump(manifest, f)


def test_changed_bytes_inside_a_record_fail_naming_shard_and_offset(tmp_path):
    split_dir, _ = write_split(str(tmp_path), labels.S3DIS, 4)
    _, shard = _first_shard(split_dir)
    index = records.SceneIndex(split_dir)
    _, offset, length = index.locations[1]
    data = bytearray(open(shard, "rb").read())
    data[offset + length // 2] ^= 0x01            # one bit of one array value: still decodes
    open(shard, "wb").write(bytes(data))
    index.read(0)                                 # the other records are fine
    with pytest.raises(ValueError, match=rf"shard-00000-of-00002.tfrecord: record 1 at byte "
                                         rf"{offset - 12} fails its check.*re-run data_prep"):
        index.read(1)


def test_shard_size_and_sha256_are_checked_against_the_manifest(tmp_path):
    split_dir, _ = write_split(str(tmp_path), labels.S3DIS, 4)
    manifest, shard = _first_shard(split_dir)
    for entry in manifest["shards"]:
        with open(os.path.join(split_dir, entry["file"]), "rb") as f:
            data = f.read()
        entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    good = json.loads(json.dumps(manifest))
    manifest["shards"][0]["bytes"] += 16
    _set_manifest(split_dir, manifest)
    with pytest.raises(ValueError, match=r"shard-00000-of-00002.tfrecord: \d+ bytes but .*manifest"):
        records.SceneIndex(split_dir)
    manifest = json.loads(json.dumps(good))
    manifest["shards"][1]["sha256"] = "0" * 64
    _set_manifest(split_dir, manifest)
    records.SceneIndex(split_dir)                  # size and CRCs fine: sha256 is opt-in
    with pytest.raises(ValueError, match=r"shard-00001-of-00002.tfrecord: sha256 .* does not match"):
        records.SceneIndex(split_dir, verify_sha256=True)
    _set_manifest(split_dir, good)
    assert len(records.SceneIndex(split_dir, verify_sha256=True)) == 4


def test_bad_scenes_are_reported(tmp_path):
    cfg = data_config.default_config()
    cfg.eval_num_sites, cfg.eval_num_points = 4096, 16384
    for field, value, match in [("segment", 13, r"labels in \[-?\d+, 13\] outside \[-1, 13\)"),
                                ("coord", np.nan, "non-finite coordinates")]:
        split_dir, scenes = write_split(str(tmp_path / field), labels.S3DIS, 1, full_res=True)
        scenes[0][field][5] = value
        with tf.io.TFRecordWriter(os.path.join(split_dir, "shard-00000-of-00001.tfrecord")) as w:
            w.write(schema.encode_scene(scenes[0]))
        with pytest.raises(tf.errors.OpError, match="S3DIS_000.*" + match):
            next(pipeline.eval_dataset(split_dir, labels.S3DIS, cfg))


def test_config_errors_name_the_field(splits):
    for field, value, match in [("ratios", (1, 2), "config.data.ratios"),
                                ("mixing", "random", "config.data.mixing"),
                                ("datasets", ("ScanNet", "KITTI"), "config.data.datasets"),
                                ("mix_prob", 1.5, "config.data.mix_prob"),
                                ("color_norm", "srgb", "config.data.color_norm"),
                                ("batch_size", 9, "batch_size=9")]:
        with pytest.raises(ValueError, match=match):
            pipeline.train_dataset(_config(splits, **{field: value}))
    wrong = _config(splits)
    wrong.train_dirs = {**dict(splits), labels.SCANNET: splits[labels.S3DIS]}
    with pytest.raises(ValueError, match="manifest says dataset 'S3DIS'"):
        pipeline.train_dataset(wrong)
    with pytest.raises(ValueError, match="config.data.crop_sample_rate: unknown dataset 'KITTI'"):
        pipeline.train_dataset(_config(splits, crop_sample_rate={"KITTI": 0.5}))
    single = _config(splits, datasets=(labels.SCANNET,), ratios=(1,))  # other crop entries unused
    assert next(pipeline.train_dataset(single))["condition"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="config.data.datasets: 'S3DIS' is not among"):
        next(pipeline.eval_dataset(splits[labels.S3DIS], labels.S3DIS, single))


def test_color_norm_unit_and_legacy():
    """color / 255 (Pointcept >= v1.6.0, the default) or color / 127.5 - 1 (checkpoints before it)."""
    color = np.array([[0, 127.5, 255], [51, 102, 204]])
    cloud = {"coord": np.zeros((2, 3)), "grid_coord": np.zeros((2, 3), np.int32), "color": color,
             "normal": np.zeros((2, 3)), "segment": np.zeros(2, np.int32)}
    assert data_config.default_config().color_norm == "unit"
    unit = pipeline.pad_row(cloud, 4, "unit")[2][:2, :3]
    np.testing.assert_array_equal(unit, np.float32([[0, 0.5, 1], [0.2, 0.4, 0.8]]))
    legacy = pipeline.pad_row(cloud, 4, "legacy")[2][:2, :3]
    np.testing.assert_allclose(legacy, [[-1, 0, 1], [-0.6, -0.2, 0.6]], atol=1e-7)


def test_reference_ratio_schedule_exact():
    """RatioSchedule equals a direct port of the reference MultiDatasetDataloader loop."""
    def reference(lengths, ratios, epochs):
        out = []
        for epoch in range(epochs):
            counters = [0] * len(lengths)  # batches drawn from each loader this epoch
            length = lengths[0] // ratios[0] * sum(ratios) + lengths[0] % ratios[0]
            for i in range(length):
                d = 0 if i >= lengths[0] // ratios[0] * sum(ratios) else int(
                    np.searchsorted(np.cumsum(ratios), i % sum(ratios), side="right"))
                restart, pos = divmod(counters[d], lengths[d])
                counters[d] += 1
                out.append((d, epoch, restart, pos))
        return out

    for lengths in [(10, 7, 3), (9, 2, 1), (4, 50, 50), (1, 1, 1)]:
        sched = schedule.RatioSchedule(lengths, (4, 2, 1))
        want = reference(lengths, (4, 2, 1), 3)
        assert [sched.locate(u) for u in range(len(want))] == want
    sched = schedule.RatioSchedule((40, 40, 40), (4, 2, 1))
    assert [sched.locate(u)[0] for u in range(7)] == [0, 0, 0, 0, 1, 1, 2]
    assert sched.epoch_length == 70


def test_pass_scenes_are_a_fresh_permutation_per_pass():
    for num in (17, 8, 5):
        first = schedule.pass_scenes(num, 0, (0, 1, 0))
        assert sorted(first) == list(range(num))
        np.testing.assert_array_equal(first, schedule.pass_scenes(num, 0, (0, 1, 0)))
        assert not np.array_equal(schedule.pass_scenes(num, 0, (0, 2, 0)), first)


def test_train_batches_static_shapes_and_padding(splits):
    cfg = _config(splits, mix_prob=0.5)
    it = pipeline.train_dataset(cfg)
    conditions = []
    for batch in _take(it, 8):
        n = cfg.num_sites
        assert set(batch) == set(pipeline.TRAIN_KEYS)
        assert batch["grid_coord"].shape == (2, n, 3) and batch["grid_coord"].dtype == np.int32
        assert batch["mask"].shape == (2, n) and batch["mask"].dtype == bool
        assert batch["feat"].shape == (2, n, 6) and batch["feat"].dtype == np.float32
        assert batch["segment"].dtype == np.int32 and batch["condition"].shape == (2,)
        mask = batch["mask"]
        assert (batch["grid_coord"] >= 0).all()
        for r in range(2):  # aligned towards 0 by a multiple of grid_align
            assert (batch["grid_coord"][r][mask[r]].min(0) < cfg.grid_align).all()
        assert (batch["grid_coord"][~mask] == 0).all() and (batch["feat"][~mask] == 0).all()
        assert (batch["segment"][~mask] == -1).all()
        color = batch["feat"][..., :3][mask]
        assert color.min() >= 0 and color.max() <= 1
        np.testing.assert_allclose(np.linalg.norm(batch["feat"][..., 3:][mask], axis=-1), 1,
                                   atol=1e-4)
        for r in range(2):
            count = mask[r].sum()
            assert mask[r, :count].all() and count > 0  # real sites first, then padding
            name = cfg.datasets[batch["condition"][r]]
            assert batch["segment"][r][mask[r]].max() < labels.num_classes(name)
            grid = batch["grid_coord"][r][mask[r]]
            assert len(np.unique(grid, axis=0)) == len(grid)  # a row is a set of sites
        assert len(set(batch["condition"])) == 1  # round robin: one dataset per batch
        conditions.append(int(batch["condition"][0]))
        metrics = pipeline.batch_metrics(batch)
        assert metrics["data/padding_fraction"] == pytest.approx(1 - mask.mean())
    assert conditions == [0, 0, 0, 0, 1, 1, 2, 0]  # Structured3D:ScanNet:S3DIS = 4:2:1
    assert it.state() == {"step": 8}


def test_align_grid_keeps_parity():
    grid = np.array([[37, 50, 16], [40, 66, 20]], np.int32)
    out = pipeline.align_grid({"grid_coord": grid}, 16)["grid_coord"]
    np.testing.assert_array_equal(out, grid - [32, 48, 16])
    shift = grid - out
    for level in range(1, 5):  # every stride-2 level groups the same voxels
        np.testing.assert_array_equal(out // 2 ** level, grid // 2 ** level - shift // 2 ** level)


def test_determinism_and_resume(splits):
    cfg = _config(splits)
    first = _take(pipeline.train_dataset(cfg), 9)
    second = _take(pipeline.train_dataset(cfg), 9)
    resumed = _take(pipeline.train_dataset(cfg, start_step=6), 3)  # across the epoch end (7 steps)
    for a, b in zip(first, second):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    bounded = list(pipeline.train_dataset(cfg, start_step=5, steps=3))   # ends: read to its end
    assert len(bounded) == 3
    for a, b in zip(first[6:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for a, b in zip(first[5:8], bounded):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    cfg.seed = 1
    other = next(pipeline.train_dataset(cfg))
    assert not np.array_equal(other["grid_coord"], first[0]["grid_coord"])


def test_site_budget_crop_is_counted(splits):
    small = next(pipeline.train_dataset(_config(splits, num_sites=200, mix_prob=0.0)))
    assert small["mask"].all() and (small["cropped_sites"] > 0).all()
    large = next(pipeline.train_dataset(_config(splits, num_sites=8192, mix_prob=0.0)))
    assert (large["cropped_sites"] == 0).all()
    assert pipeline.batch_metrics(large)["data/padding_fraction"] > 0.5


def test_mix3d_rows_are_sets_of_two_scenes(splits):
    cfg = _config(splits, mix_prob=1.0, num_sites=600)
    for batch in _take(pipeline.train_dataset(cfg), 3):
        for r in range(cfg.batch_size):
            grid = batch["grid_coord"][r][batch["mask"][r]]
            assert len(np.unique(grid, axis=0)) == len(grid)
            assert cfg.num_sites // 2 < len(grid) <= cfg.num_sites  # both halves contributed
    unmixed = next(pipeline.train_dataset(_config(splits, mix_prob=0.0, num_sites=600)))
    assert unmixed["mask"].all()


def test_per_sample_mixing_rows_follow_the_schedule(splits):
    cfg = _config(splits, mixing="per_sample", batch_size=7, mix_prob=0.0, num_sites=256)
    batch = next(pipeline.train_dataset(cfg))
    assert list(batch["condition"]) == [0, 0, 0, 0, 1, 1, 2]
    assert pipeline.steps_per_epoch(cfg) == (8 // 4 * 7 + 0) // 7


@pytest.mark.parametrize("mixing", ["round_robin", "per_sample"])
def test_hosts_read_their_rows_of_the_same_global_batches(splits, mixing):
    """2 hosts x 2 rows = 1 host x 4 rows, step by step and row by row, across an epoch end."""
    cfg = _config(splits, batch_size=4, mix_prob=0.5, mixing=mixing)
    one = _take(pipeline.train_dataset(cfg), 5)
    hosts = [_take(pipeline.train_dataset(cfg, h, 2, start_step=2), 3) for h in range(2)]
    assert pipeline.steps_per_epoch(cfg) == (2 if mixing == "round_robin" else 3)
    for t, whole in enumerate(one[2:]):
        for k in whole:
            assert hosts[0][t][k].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([hosts[0][t][k], hosts[1][t][k]]), whole[k])
    with pytest.raises(ValueError, match="batch_size: 4 rows per global batch do not split over 3"):
        pipeline.train_dataset(cfg, 0, 3)


def test_eval_host_split_is_lockstep_and_complete():
    for num, batch, hosts in [(7, 2, 2), (4, 4, 2), (1, 2, 2), (10, 3, 3)]:
        parts = [pipeline._host_positions(num, batch, h, hosts) for h in range(hosts)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) % (batch // hosts) == 0
        # host h holds the h-th slice of every global batch of the one-host order
        joined = np.stack([p.reshape(-1, batch // hosts) for p in parts], 1).reshape(-1)
        one = pipeline._host_positions(num, batch, 0, 1)
        np.testing.assert_array_equal(joined, one)
        assert sorted(one[one >= 0]) == list(range(num)) and (one[num:] == -1).all()


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("val"))
    return write_split(root, labels.S3DIS, 3, per_shard=2, shape=(16, 14, 10), full_res=True,
                       seed=5)


def test_eval_inverse_maps_points_to_sites_with_their_label(splits, val_split):
    split_dir, scenes = val_split
    cfg = _config(splits, eval_batch_size=2)
    batches = list(pipeline.eval_dataset(split_dir, labels.S3DIS, cfg))
    assert len(batches) == 2  # 3 scenes -> 2 batches of 2 rows, the last row empty
    rows = [(b, r) for b in batches for r in range(2)]
    for (batch, r), scene in zip(rows, scenes + [None]):
        assert batch["condition"][r] == cfg.datasets.index(labels.S3DIS)
        inverse, mask = batch["inverse"][r], batch["mask"][r]
        if scene is None:
            assert not mask.any() and (inverse == -1).all()
            continue
        num_points = len(scene["inverse"])
        assert (inverse[:num_points] >= 0).all() and (inverse[num_points:] == -1).all()
        assert mask[inverse[:num_points]].all()
        np.testing.assert_array_equal(batch["origin_segment"][r][:num_points],
                                      scene["origin_segment"])
        np.testing.assert_array_equal(batch["segment"][r][inverse[:num_points]],
                                      scene["origin_segment"])
        grid = batch["grid_coord"][r][mask]
        assert len(np.unique(grid, axis=0)) == len(grid) == mask.sum()
    with pytest.raises(tf.errors.OpError, match="eval_num_sites"):
        list(pipeline.eval_dataset(split_dir, labels.S3DIS, _config(splits, eval_num_sites=100)))


def test_fragments_cover_every_point_and_voxel(splits, val_split):
    split_dir, scenes = val_split
    cfg = _config(splits, test_batch_size=4)
    out = list(pipeline.fragment_dataset(split_dir, labels.S3DIS, cfg))
    assert [o["scene"] for o in out] == [s["scene"] for s in scenes]
    for item, scene in zip(out, scenes):
        num_sites = len(scene["coord"])
        views = []  # consecutive rows with the same voxel set = the fragments of one view
        for batch in item["batches"]:
            assert batch["index"].shape == (4, cfg.eval_num_sites)
            for r in range(4):
                mask = batch["mask"][r]
                index = batch["index"][r][mask]
                assert (batch["index"][r][~mask] == -1).all()
                if not mask.any():
                    continue
                np.testing.assert_array_equal(batch["segment"][r][mask], scene["segment"][index])
                grid = batch["grid_coord"][r][mask]
                assert len(np.unique(grid, axis=0)) == len(grid) == len(np.unique(index))
                voxels = np.unique(grid, axis=0).tobytes()
                if not views or views[-1][0] != voxels:
                    views.append((voxels, np.zeros(num_sites, bool)))
                views[-1][1][index] = True
        assert len(views) == len(pipeline.TTA_VIEWS)
        for _, covered in views:  # the fragments of every view cover every stored site
            assert covered.all()
        assert item["inverse"].max() == num_sites - 1  # and so every original point


def test_shards_on_object_storage(splits, ram_dir):
    """Manifest, index and records are read through etils.epath / TensorFlow's file systems: a split
    copied to a non-local file system trains on the same batches."""
    remote = {}
    for name, local in splits.items():
        remote[name] = f"{ram_dir}/{name}"
        tf.io.gfile.makedirs(remote[name])
        for f in tf.io.gfile.listdir(local):
            tf.io.gfile.copy(os.path.join(local, f), f"{remote[name]}/{f}")
    want = _take(pipeline.train_dataset(_config(splits)), 2)
    got = _take(pipeline.train_dataset(_config(remote)), 2)
    for a, b in zip(want, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_steps_per_epoch_reads_the_manifests_only(tmp_path):
    dirs = {name: write_split(str(tmp_path), name, n, seed=i)[0]
            for i, (name, n) in enumerate(((labels.STRUCTURED3D, 8), (labels.SCANNET, 5), (labels.S3DIS, 4)))}
    cfg = _config(dirs)
    want = pipeline.steps_per_epoch(cfg)
    for d in dirs.values():
        for f in os.listdir(d):
            if f.endswith(".tfrecord"):
                os.remove(os.path.join(d, f))          # no shard left to open
    assert pipeline.steps_per_epoch(cfg) == want == (8 // 2) // 4 * 7 + (8 // 2) % 4


def _level_sites(grid, levels):
    """Distinct floor(p / 2**l) per level l = 1..levels, by brute force over Python tuples."""
    return [len({tuple(c >> level for c in p) for p in grid.tolist()}) for level in range(1, levels + 1)]


def test_fit_levels_keeps_the_nearest_sites_that_fit_every_level():
    """Eight sites on a line, x = 0..7: level-1 cells x // 2. With 2 level-1 sites allowed, the sites
    nearest the centroid 3.5 come first (3, 4, 2, 5, then 1 opens a third cell): 2, 3, 4, 5 stay."""
    grid = np.zeros((8, 3), np.int32)
    grid[:, 0] = [5, 0, 3, 7, 1, 4, 6, 2]                      # any order: the kept ones keep theirs
    cloud = {"grid_coord": grid, "segment": np.arange(8, dtype=np.int32)}
    out, dropped = pipeline.fit_levels(cloud, (2,))
    assert dropped == 4 and out["grid_coord"][:, 0].tolist() == [5, 3, 4, 2]
    assert out["segment"].tolist() == [0, 2, 5, 7]
    same, none = pipeline.fit_levels(cloud, (4, 2))           # 4 level-1 and 2 level-2 cells: fits
    assert none == 0 and same is cloud


def test_fit_levels_on_random_rows_fits_every_budget_and_is_maximal():
    rng = np.random.default_rng(0)
    for _ in range(5):
        grid = np.unique(rng.integers(0, 48, (900, 3)), axis=0).astype(np.int32)
        need = _level_sites(grid, 4)
        budgets = tuple(int(n * f) for n, f in zip(need, rng.uniform(0.5, 1.1, 4)))
        out, dropped = pipeline.fit_levels({"grid_coord": grid}, budgets)
        kept = out["grid_coord"]
        assert dropped == len(grid) - len(kept)
        assert all(n <= b for n, b in zip(_level_sites(kept, 4), budgets))
        if dropped:   # the next site in distance order would not fit
            order = np.argsort(np.sum((grid - grid.mean(0)) ** 2, axis=1), kind="stable")
            more = grid[order[:len(kept) + 1]]
            assert any(n > b for n, b in zip(_level_sites(more, 4), budgets))


def test_training_rows_fit_the_level_budgets(splits):
    cfg = _config(splits, mix_prob=0.5)
    free = _take(pipeline.train_dataset(cfg), 4)
    need = np.array([_level_sites(g[m], 4) for b in free for g, m in zip(b["grid_coord"], b["mask"])])
    budgets = tuple(int(n) for n in need.max(0) * 0.8)
    fitted = _take(pipeline.train_dataset(cfg, level_sites=budgets), 4)
    for a, b in zip(free, fitted):
        for g, m, extra, before, crop in zip(b["grid_coord"], b["mask"], a["mask"].sum(1) - b["mask"].sum(1),
                                              a["cropped_sites"], b["cropped_sites"]):
            assert all(n <= s for n, s in zip(_level_sites(g[m], 4), budgets))
            assert crop == before + extra
    assert sum(int(b["cropped_sites"].sum()) for b in fitted) > sum(int(b["cropped_sites"].sum()) for b in free)
