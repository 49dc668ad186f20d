"""Random access to the scenes of a split: manifest -> shard list -> byte offset of every record.

The pipeline shuffles scenes globally (a fresh permutation per epoch, not a shuffle buffer), so it
reads single records by position. A TFRecord file is a sequence of
`uint64 length | uint32 crc(length) | data[length] | uint32 crc(data)`; `SceneIndex` walks the headers
once (12 bytes read per record) and then reads any scene with one seek. Reads go through
`tf.io.gfile`, so shards may live on GCS as well as on local disk.

The record CRCs are not recomputed on every read (Python has no fast crc32c); shard integrity is
data_prep's sha256 per shard in the manifest, and a corrupt record fails to decode with its location.

Records are decoded with the protobuf parser straight into numpy (no TF ops): decoding runs inside
`tf.numpy_function` worker threads, where eager TF calls would serialise on the runtime.
"""

import os
import struct

import numpy as np
import tensorflow as tf

from ppt_jax.data import schema


class SceneIndex:
    """All scenes of one split directory, in manifest shard order then record order."""

    def __init__(self, split_dir):
        self.split_dir = split_dir
        manifest = schema.read_manifest(split_dir)
        where = os.path.join(split_dir, schema.MANIFEST_NAME)
        if not manifest.get("shards"):
            raise ValueError(f"{where}: manifest lists no shards")
        self.dataset = manifest.get("dataset")
        self.locations = []  # (path, data offset, data length) per scene
        for shard in manifest["shards"]:
            path = os.path.join(split_dir, shard["file"])
            found = _record_spans(path)
            expected = shard.get("num_scenes")
            if expected is not None and expected != len(found):
                raise ValueError(f"{path}: holds {len(found)} records but {where} says {expected}; "
                                 f"the shard is truncated or stale: re-run data_prep")
            self.locations += [(path, offset, length) for offset, length in found]
        if not self.locations:
            raise ValueError(f"{split_dir}: the shards hold no scenes")

    def __len__(self):
        return len(self.locations)

    def read(self, i):
        """The decoded scene at position i (see `decode`)."""
        path, offset, length = self.locations[i]
        with tf.io.gfile.GFile(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ValueError(f"{path}: record at byte {offset} is truncated")
        return decode(data, f"{path}@{offset}")


def _record_spans(path):
    """(data offset, data length) of every record in one TFRecord file."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"shard {path} listed in the manifest does not exist")
    size = tf.io.gfile.stat(path).length
    spans, pos = [], 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {pos}")
            (length,) = struct.unpack("<Q", header[:8])
            if pos + 16 + length > size:
                raise ValueError(f"{path}: record at byte {pos} claims {length} bytes past the end "
                                 f"of the file ({size} bytes): truncated shard")
            spans.append((pos + 12, length))
            pos += 16 + length
    return spans


def _array(feature, name, dtype, shape, where):
    values = feature[name].bytes_list.value
    if len(values) != 1:
        raise ValueError(f"{where}: field {name!r} missing")
    arr = np.frombuffer(values[0], np.dtype(dtype).newbyteorder("<"))
    return arr.astype(dtype, copy=False).reshape(-1, *shape)


def decode(data, where="record"):
    """Example bytes -> dict: dataset, scene, grid_size, the SITE_FIELDS arrays unpadded (num_sites
    rows) and the POINT_FIELDS arrays (empty for train scenes). Same result as `schema.decode_scene`.
    """
    try:
        feature = tf.train.Example.FromString(data).features.feature
    except Exception as err:
        raise ValueError(f"{where}: not a tf.train.Example ({err})") from err
    version = feature["schema_version"].int64_list.value
    if list(version) != [schema.SCHEMA_VERSION]:
        raise ValueError(f"{where}: schema_version {list(version)} != supported "
                         f"{schema.SCHEMA_VERSION}; re-run data_prep")
    num_sites = feature["num_sites"].int64_list.value[0]
    scene = {"dataset": feature["dataset"].bytes_list.value[0].decode(),
             "scene": feature["scene"].bytes_list.value[0].decode(),
             "grid_size": feature["grid_size"].float_list.value[0]}
    for name, (dtype, shape) in schema.SITE_FIELDS.items():
        scene[name] = _array(feature, name, dtype, shape, where)[:num_sites]
    for name, (dtype, shape) in schema.POINT_FIELDS.items():
        scene[name] = _array(feature, name, dtype, shape, where)
    return scene
