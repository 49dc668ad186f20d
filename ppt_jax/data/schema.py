"""The shard schema: the one contract between `data_prep` (writer) and the input pipeline (reader).

Version 1. A split directory holds `shard-XXXXX-of-YYYYY.tfrecord` files and a `manifest.json`.
Each TFRecord record is one `tf.train.Example` = one scene (a ScanNet scan, an S3DIS room, a
Structured3D room, or a synthetic room), voxelized at the stored grid `grid_size` (default 0.01 m):

- one *site* per occupied stored voxel, keeping one real point of that voxel (its coordinate, colour,
  normal and labels: not the voxel centre), so that the reference's 2 cm training-time grid sampling
  (a random point per 2 cm voxel) and its test-time fragments remain possible from the stored sites;
- sites sorted by their grid key `(x * GRID_BOUND + y) * GRID_BOUND + z` (lexicographic x, y, z), the
  "hash-grid" order, with `grid_coord = floor((coord - coord.min(0)) / grid_size)`;
- every per-site array padded to a multiple of `PAD_MULTIPLE` rows (`num_sites` are real); padding rows
  are zeros, with `segment = instance = -1` and `grid_coord = -1`.

Val/test scenes also carry the full-resolution evaluation fields: `origin_segment` (the label of every
original point, -1 = unannotated) and `inverse` (each original point's site index), so predictions
made on sites go back to every original point.

Arrays are stored as raw little-endian bytes (exact round trip, fast to decode); Examples are
serialized deterministically (sorted feature keys), so equal scenes give equal bytes in any process.

Why 1 cm: the reference samples one random point per 2 cm voxel for training and splits each 2 cm
voxel's points into test fragments; 1 cm sites keep both possible (up to 8 real sites per 2 cm voxel)
while dropping points that 2 cm sampling cannot tell apart (data_prep/README.md has the details).
"""

import json

import numpy as np
from etils import epath

SCHEMA_VERSION = 1
PAD_MULTIPLE = 1024
GRID_BOUND = 1 << 16  # per-axis bound on stored grid coordinates (655 m at 1 cm)
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:05d}-of-{count:05d}.tfrecord"

# name -> (numpy dtype, trailing shape) for the per-site arrays (leading axis = padded sites).
SITE_FIELDS = {
    "coord": (np.float32, (3,)),
    "color": (np.uint8, (3,)),
    "normal": (np.float32, (3,)),
    "grid_coord": (np.int32, (3,)),
    "segment": (np.int32, ()),
    "instance": (np.int32, ()),
}
# Per original point (val/test scenes only; empty arrays for train scenes).
POINT_FIELDS = {
    "origin_segment": (np.int32, ()),
    "inverse": (np.int32, ()),
}
_PAD_VALUE = {"segment": -1, "instance": -1, "grid_coord": -1}


def padded_size(num_sites):
    return max(PAD_MULTIPLE, -(-num_sites // PAD_MULTIPLE) * PAD_MULTIPLE)


def _example_protos():
    """`tf.train`, imported on first encode or decode: the schema's constants and manifests are read
    by processes that never touch a record (configs, model benchmarks), and TensorFlow costs 0.5 GiB."""
    import tensorflow as tf
    return tf.train


def encode_scene(scene):
    """Serialize one voxelized scene (a dict of numpy arrays, unpadded) to `tf.train.Example` bytes.

    Required keys: dataset (str), scene (str), grid_size (float) and SITE_FIELDS with equal leading
    lengths; optional POINT_FIELDS. Sites must already be in grid-key order (see `grid_key`).
    """
    train = _example_protos()

    def bytes_feature(value):
        return train.Feature(bytes_list=train.BytesList(value=[value]))

    def int_feature(value):
        return train.Feature(int64_list=train.Int64List(value=[int(value)]))

    num_sites = len(scene["coord"])
    size = padded_size(num_sites)
    feats = {
        "schema_version": int_feature(SCHEMA_VERSION),
        "dataset": bytes_feature(scene["dataset"].encode()),
        "scene": bytes_feature(scene["scene"].encode()),
        "grid_size": train.Feature(float_list=train.FloatList(value=[float(scene["grid_size"])])),
        "num_sites": int_feature(num_sites),
    }
    for name, (dtype, shape) in SITE_FIELDS.items():
        arr = np.asarray(scene[name])
        if arr.shape != (num_sites, *shape):
            raise ValueError(f"scene {scene['scene']}: field {name} has shape {arr.shape}, "
                             f"expected {(num_sites, *shape)}")
        padded = np.full((size, *shape), _PAD_VALUE.get(name, 0), dtype)
        padded[:num_sites] = arr
        feats[name] = bytes_feature(padded.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
    num_points = len(scene["inverse"]) if "inverse" in scene else 0
    feats["num_points"] = int_feature(num_points)
    for name, (dtype, _) in POINT_FIELDS.items():
        arr = np.asarray(scene.get(name, np.zeros(0, dtype)), dtype)
        if arr.shape != (num_points,):
            raise ValueError(f"scene {scene['scene']}: field {name} has shape {arr.shape}, "
                             f"expected {(num_points,)}")
        feats[name] = bytes_feature(arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
    example = train.Example(features=train.Features(feature=feats))
    return example.SerializeToString(deterministic=True)  # sorted map keys: same bytes in every process


def _array(feature, name, dtype, shape, where):
    values = feature[name].bytes_list.value
    if len(values) != 1:
        raise ValueError(f"{where}: field {name!r} missing")
    arr = np.frombuffer(values[0], np.dtype(dtype).newbyteorder("<"))
    return arr.astype(dtype, copy=False).reshape(-1, *shape)


def decode_scene(data, where="record"):
    """Example bytes -> dict: dataset, scene, grid_size, schema_version, the SITE_FIELDS arrays
    unpadded (num_sites rows) and the POINT_FIELDS arrays (empty for train scenes).

    The protobuf parser straight into numpy, no TF ops: the pipeline decodes inside
    `tf.numpy_function` worker threads, where eager TF calls would serialise on the runtime.
    """
    try:
        feature = _example_protos().Example.FromString(data).features.feature
    except Exception as err:
        raise ValueError(f"{where}: not a tf.train.Example ({err})") from err
    version = feature["schema_version"].int64_list.value
    if list(version) != [SCHEMA_VERSION]:
        raise ValueError(f"{where}: schema_version {list(version)} != supported "
                         f"{SCHEMA_VERSION}; re-run data_prep")
    num_sites = feature["num_sites"].int64_list.value[0]
    scene = {"dataset": feature["dataset"].bytes_list.value[0].decode(),
             "scene": feature["scene"].bytes_list.value[0].decode(),
             "grid_size": feature["grid_size"].float_list.value[0],
             "schema_version": SCHEMA_VERSION}
    for name, (dtype, shape) in SITE_FIELDS.items():
        scene[name] = _array(feature, name, dtype, shape, where)[:num_sites]
    for name, (dtype, shape) in POINT_FIELDS.items():
        scene[name] = _array(feature, name, dtype, shape, where)
    return scene


def ravel_grid(grid_coord, extent=None):
    """int64 key of non-negative grid coordinates (N, 3), lexicographic in (x, y, z): equal keys are
    equal voxels. `extent` (3,) bounds each axis (default: the coordinates' max + 1). The numpy
    flattener of the data path (the sparse engine has its own int32 one for jit)."""
    g = np.asarray(grid_coord, np.int64)
    e = (g.max(0) + 1 if len(g) else np.ones(3, np.int64)) if extent is None else np.asarray(extent)
    return (g[:, 0] * e[1] + g[:, 1]) * e[2] + g[:, 2]


def grid_key(grid_coord):
    """int64 hash-grid key of stored grid coordinates (N, 3); the site order inside a shard."""
    g = np.asarray(grid_coord, np.int64)
    if g.size and (g.min() < 0 or g.max() >= GRID_BOUND):
        raise ValueError(f"grid coordinates must lie in [0, {GRID_BOUND}); got "
                         f"[{g.min()}, {g.max()}]")
    return ravel_grid(g, (GRID_BOUND,) * 3)


def read_manifest(split_dir):
    """The split's manifest (`split_dir` may be local or gs://..., read through etils.epath)."""
    path = epath.Path(split_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no shard manifest at {path}: run data_prep for this split first")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run data_prep") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {manifest.get('schema_version')} "
                         f"!= supported {SCHEMA_VERSION}; re-run data_prep")
    return manifest
