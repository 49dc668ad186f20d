"""The shard schema: exact round trips through tf.train.Example, padding, bounds and manifest checks."""

import json

import numpy as np
import pytest
import tensorflow as tf

from ppt_jax.data import schema


def scene(num_sites=5, num_points=0, seed=0):
    rng = np.random.default_rng(seed)
    out = {"dataset": "S3DIS", "scene": "Area_5/office_1", "grid_size": 0.01,
           "coord": rng.normal(size=(num_sites, 3)).astype(np.float32),
           "color": rng.integers(0, 256, (num_sites, 3)).astype(np.uint8),
           "normal": rng.normal(size=(num_sites, 3)).astype(np.float32),
           "grid_coord": rng.integers(0, 1000, (num_sites, 3)).astype(np.int32),
           "segment": rng.integers(-1, 13, num_sites).astype(np.int32),
           "instance": rng.integers(-1, 9, num_sites).astype(np.int32)}
    if num_points:
        out["inverse"] = rng.integers(0, num_sites, num_points).astype(np.int32)
        out["origin_segment"] = rng.integers(-1, 13, num_points).astype(np.int32)
    return out


@pytest.mark.parametrize("num_sites,num_points", [(5, 0), (1024, 3000), (1025, 7)])
def test_round_trip_every_field(num_sites, num_points):
    src = scene(num_sites, num_points)
    got = schema.decode_scene(schema.encode_scene(src))
    assert got["dataset"] == "S3DIS" and got["scene"] == "Area_5/office_1"
    assert got["schema_version"] == schema.SCHEMA_VERSION and got["grid_size"] == np.float32(0.01)
    for name, (dtype, shape) in schema.SITE_FIELDS.items():
        assert got[name].dtype == dtype and got[name].shape == (num_sites, *shape)
        np.testing.assert_array_equal(got[name], src[name])
    for name in schema.POINT_FIELDS:
        np.testing.assert_array_equal(got[name], src.get(name, np.zeros(0, np.int32)))


def test_padding_rows_as_stored():
    # Read back with TensorFlow's own Example parser and raw-byte decoder (independent of decode_scene).
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("coord", "color", "segment", "instance",
                                                               "grid_coord")}
    spec["num_sites"] = tf.io.FixedLenFeature([], tf.int64)
    ex = tf.io.parse_single_example(tf.constant(schema.encode_scene(scene(1025))), spec)
    raw = {k: tf.io.decode_raw(ex[k], tf.as_dtype(schema.SITE_FIELDS[k][0]), little_endian=True).numpy()
           for k in ("coord", "color", "segment", "instance", "grid_coord")}
    assert raw["coord"].shape == (2048 * 3,) and int(ex["num_sites"]) == 1025
    assert (raw["segment"][1025:] == -1).all() and (raw["instance"][1025:] == -1).all()
    assert (raw["grid_coord"][1025 * 3:] == -1).all() and not raw["color"][1025 * 3:].any()
    assert schema.padded_size(0) == schema.PAD_MULTIPLE and schema.padded_size(2049) == 3072


def test_same_scene_same_bytes():
    assert schema.encode_scene(scene(seed=3)) == schema.encode_scene(scene(seed=3))


def test_shape_errors_name_the_field():
    bad = scene(5)
    bad["normal"] = bad["normal"][:4]
    with pytest.raises(ValueError, match=r"scene Area_5/office_1: field normal has shape \(4, 3\), expected \(5, 3\)"):
        schema.encode_scene(bad)
    bad = scene(5, 6)
    bad["origin_segment"] = bad["origin_segment"][:2]
    with pytest.raises(ValueError, match="field origin_segment has shape"):
        schema.encode_scene(bad)


def test_grid_key_order_and_bounds():
    g = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(np.argsort(schema.grid_key(g)), [3, 0, 1, 2])  # lexicographic x, y, z
    with pytest.raises(ValueError, match="grid coordinates must lie in"):
        schema.grid_key(np.array([[0, 0, schema.GRID_BOUND]]))


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard manifest at .*manifest.json: run data_prep"):
        schema.read_manifest(str(tmp_path))
    (tmp_path / schema.MANIFEST_NAME).write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(ValueError, match="schema_version 0 != supported 1; re-run data_prep"):
        schema.read_manifest(str(tmp_path))
