"""Random access to the scenes of a split: manifest -> shard list -> byte offset of every record.

The pipeline shuffles scenes globally (a fresh permutation per epoch, not a shuffle buffer), so it
reads single records by position. A TFRecord file is a sequence of
`uint64 length | uint32 crc(length) | data[length] | uint32 crc(data)`; `SceneIndex` walks the headers
once (12 bytes read per record) and then reads any scene with one seek. Reads go through TensorFlow's
file systems, so shards may live on GCS as well as on local disk.

Integrity: every read goes through TensorFlow's random-access record reader, which checks both CRCs
of the record (the check tf.data's own TFRecord reader makes), so changed bytes inside a shard fail
with the shard and byte offset named. Opening a split checks each shard's size and record count
against the manifest; `verify_sha256=True` also recomputes the sha256 data_prep recorded for each
shard (it reads every shard once more: off by default, as real splits run to hundreds of GB).

Records are decoded by `schema.decode_scene` (protobuf straight into numpy).
"""

import hashlib
import struct

import tensorflow as tf
from etils import epath
from tensorflow.python.lib.io import tf_record


from ppt_jax.data import schema


class SceneIndex:
    """All scenes of one split directory, in manifest shard order then record order."""

    def __init__(self, split_dir, verify_sha256=False):
        self.split_dir = split_dir
        manifest = schema.read_manifest(split_dir)
        where = str(epath.Path(split_dir) / schema.MANIFEST_NAME)
        if not manifest.get("shards"):
            raise ValueError(f"{where}: manifest lists no shards")
        self.dataset = manifest.get("dataset")
        self.locations = []  # (path, data offset, data length) per scene
        for shard in manifest["shards"]:
            path = str(epath.Path(split_dir) / shard["file"])
            _check_shard_file(path, shard, where, verify_sha256)
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
        """The decoded scene at position i (`schema.decode_scene`)."""
        path, offset, length = self.locations[i]
        start = offset - 12
        try:
            data, _ = tf_record.tf_record_random_reader(path).read(start)
        except tf.errors.OpError as err:
            raise ValueError(f"{path}: record {i} at byte {start} fails its check ({err.message}): "
                             f"the shard changed after data_prep wrote it; re-run data_prep") from None
        if len(data) != length:
            raise ValueError(f"{path}: record at byte {start} holds {len(data)} bytes, the index "
                             f"says {length}: the shard changed while it was read")
        return schema.decode_scene(data, f"{path}@{offset}")


def _check_shard_file(path, shard, manifest_path, verify_sha256):
    """The shard's size (and optionally sha256) as the manifest records them."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"shard {path} listed in the manifest does not exist")
    size = tf.io.gfile.stat(path).length
    if shard.get("bytes") is not None and size != shard["bytes"]:
        raise ValueError(f"{path}: {size} bytes but {manifest_path} says {shard['bytes']}; the "
                         f"shard is truncated or stale: re-run data_prep")
    if verify_sha256 and shard.get("sha256"):
        digest = hashlib.sha256()
        with tf.io.gfile.GFile(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != shard["sha256"]:
            raise ValueError(f"{path}: sha256 {digest.hexdigest()[:12]}... does not match "
                             f"{shard['sha256'][:12]}... in {manifest_path}: the shard changed "
                             f"after data_prep wrote it; re-run data_prep")


def _record_spans(path):
    """(data offset, data length) of every record in one TFRecord file."""
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
