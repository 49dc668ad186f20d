"""Inference tool: label point clouds with an exported PPT model, write a labelled PLY and a picture.

    python -m ppt_jax.predict --checkpoint EXPORT_DIR --dataset scannet --input scene.ply --out DIR
    python -m ppt_jax.predict --checkpoint EXPORT_DIR --dataset s3dis --input scenes/ --out DIR --vote

EXPORT_DIR is what `python -m ppt_jax.main --mode export` writes (weights + config.json). `--dataset`
picks the prompt, the normalization and the class names (any of the datasets the model was trained
with). `--input` is a PLY file (ASCII or binary, with or without faces and normals: normals are
estimated when absent), a shard file (`*.tfrecord` written by data_prep: every scene in it), or a
directory of such files (a file that cannot be read is reported and skipped, the others are
labelled, and the exit status is 1; 2 when nothing could be labelled). For each scene the tool
writes `<out>/<scene>.ply` (vertices x y z, class colour red green blue, `label` in the dataset's
own label order, `confidence` = the winning class's probability) and `<out>/<scene>.png` (top and
oblique views, legend with class names).

Without `--vote` the scene is grid-sampled once at the model's grid (one point per voxel) and every
point takes its voxel's prediction; `--vote` runs the reference's test-time augmentation instead
(13 views x all grid-sampling fragments, softmax summed per point; docs/reference.md §8).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

from ppt_jax import host_memory, labels, normals, ply, render

INPUT_SUFFIXES = (".ply", ".tfrecord")


class InputError(ValueError):
    """A bad input file; the message starts with the file's path."""

    def __init__(self, path, problem):
        super().__init__(f"{path}: {problem}")


@dataclasses.dataclass
class Cloud:
    name: str
    coord: np.ndarray            # (P, 3) metres as read (float64 kept: georeferenced clouds)
    color: np.ndarray            # (P, 3) uint8
    normal: np.ndarray           # (P, 3) float32 unit (estimated when the file has none)
    source: str


# ----------------------------------------------------------------------------- input


def model_coord(coord):
    """float32 coordinates for the model, centred as the pipeline's CenterShift does, in float64
    first: float32 cannot hold survey coordinates (UTM northings of 4e6 m are 0.25 m apart)."""
    from ppt_jax.data import augment

    centred = augment.center_shift({"coord": np.asarray(coord, np.float64)}, apply_z=True)
    return centred["coord"].astype(np.float32)


def _checked(name, coord, color, normal, source):
    """Validate one scene's arrays; InputError names the file and the problem."""
    coord = np.asarray(coord)
    coord = coord.astype(np.float64 if coord.dtype != np.float32 else np.float32)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise InputError(source, "no points")
    bad = ~np.isfinite(coord).all(1)
    if bad.any():
        raise InputError(source, f"{int(bad.sum())} of {len(coord)} points have NaN/inf coordinates "
                                 f"(first at vertex {int(np.argmax(bad))})")
    if color is None:
        raise InputError(source, "no vertex colours (red, green, blue): the model needs RGB input")
    color = np.asarray(color)
    if np.issubdtype(color.dtype, np.floating):
        if not np.isfinite(color).all():
            raise InputError(source, "colours contain NaN/inf")
        if color.max(initial=0) <= 1.0:          # float colours in [0, 1]
            color = color * 255.0
        color = np.clip(np.rint(color), 0, 255)
    color = color.astype(np.uint8)
    if normal is None:
        normal = normals.pca_normals(model_coord(coord))
    else:
        normal = np.asarray(normal, np.float32)
        if not np.isfinite(normal).all():
            raise InputError(source, "normals contain NaN/inf")
        length = np.linalg.norm(normal, axis=1, keepdims=True)
        normal = np.where(length > 1e-6, normal / np.maximum(length, 1e-6), 0).astype(np.float32)
    return Cloud(name, coord, color, normal, source)


def _read_ply_vertices(path):
    """{property: array} of a PLY's vertex element, ASCII or binary (`ppt_jax.ply`)."""
    try:
        vertex = ply.read_ply(path).get("vertex")
    except ply.NotPlyError as err:
        raise InputError(path, str(err).split(": ", 1)[-1]) from None
    except ValueError as err:
        raise InputError(path, f"unreadable PLY: {str(err).split(': ', 1)[-1]}") from None
    if vertex is None:
        raise InputError(path, "PLY has no vertex element")
    return {name: vertex[name] for name in vertex.dtype.names}


def read_ply_cloud(path):
    """One PLY file -> Cloud (colours required; normals estimated when the file has none)."""
    vertex = _read_ply_vertices(path)
    if not all(a in vertex for a in "xyz"):
        raise InputError(path, f"vertex element has no x, y, z properties (has {sorted(vertex)})")
    coord = np.stack([vertex[a] for a in "xyz"], 1)
    color = (np.stack([vertex[c] for c in ("red", "green", "blue")], 1)
             if all(c in vertex for c in ("red", "green", "blue")) else None)
    normal = (np.stack([vertex[n] for n in ("nx", "ny", "nz")], 1)
              if all(n in vertex for n in ("nx", "ny", "nz")) else None)
    name = os.path.splitext(os.path.basename(path))[0]
    return _checked(name, coord, color, normal, path)


def read_shard_clouds(path):
    """Every scene of one data_prep shard file (its stored sites) -> Clouds."""
    import tensorflow as tf

    from ppt_jax.data import schema

    try:
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        scenes = [schema.decode_scene(r) for r in records]
    except (tf.errors.OpError, ValueError, KeyError) as err:
        raise InputError(path, f"not a readable shard (TFRecord of schema v{schema.SCHEMA_VERSION}): "
                               f"{str(err).splitlines()[0]}") from None
    if not scenes:
        raise InputError(path, "shard holds no scenes")
    return [_checked(s["scene"], s["coord"], s["color"], s["normal"], f"{path} scene {s['scene']}")
            for s in scenes]


def input_files(path):
    """The files named by --input: one file, or every PLY/shard of a directory (sorted)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(INPUT_SUFFIXES))
        if not files:
            raise InputError(path, f"directory holds no {' or '.join(INPUT_SUFFIXES)} files")
        return files
    if not os.path.exists(path):
        raise InputError(path, "no such file or directory")
    return [path]


def read_clouds(file):
    """One input file -> list of Clouds (PLY by content, shards by the .tfrecord suffix)."""
    if file.lower().endswith(".tfrecord"):
        return read_shard_clouds(file)
    return [read_ply_cloud(file)]


# ----------------------------------------------------------------------------- model


def _round_up(n, multiple):
    return max(multiple, -(-int(n) // multiple) * multiple)


def exact_spec(batches, sparse_config):
    """HierarchySpec in which every row of `batches` fits: the trainer's sizing (`sparse.sizing`) on the rows
    themselves, no margin, sites rounded up to 256 and pairs to whole chunks per level (similar scenes may
    share a compiled forward). No site or pair is ever dropped, whatever the scene's shape."""
    from ppt_jax.sparse import sizing

    rows = [g[m] for b in batches for g, m in zip(b["grid_coord"], b["mask"])]
    return sizing.spec_from_stats(sizing.measure(rows), batches[0]["mask"].shape[1],
                                  form=sparse_config.conv_form, margin=1.0, pair_margin=1.0,
                                  scale_to_budget=False, multiple=256,
                                  search_method=sparse_config.search_method)


class Predictor:
    """An exported model, ready to give per-site class probabilities for one of its datasets."""

    def __init__(self, export_dir):
        import ml_collections

        from ppt_jax.train import checkpoint, setup, sharding

        try:
            variables, meta = checkpoint.load_export(export_dir)
        except FileNotFoundError as err:
            raise InputError(export_dir, "not an exported model: "
                                         + str(err).split(": ", 1)[-1]) from None
        if meta.get("part") != "full":
            raise InputError(export_dir, f"holds the '{meta.get('part')}' export; prediction needs the "
                                         f"full model (export with config.export.part='full')")
        self.variables = variables
        self.config = ml_collections.ConfigDict(meta["config"])
        if "color_norm" not in self.config.data:      # exports written before the field existed
            from ppt_jax.data import config as data_config
            self.config.data.color_norm = data_config.DEFAULT_COLOR_NORM
        table, _ = setup.text_table(self.config, export_dir)
        self.model = setup.build_model(self.config, table)
        self.datasets = tuple(self.config.model.conditions)
        self.grid_size = float(self.config.data.grid_size)
        self._mesh = sharding.make_mesh()
        self._steps = {}

    def condition(self, dataset):
        """Canonical name and model condition of `dataset` (case-insensitive)."""
        for i, name in enumerate(self.datasets):
            if name.lower() == dataset.lower():
                return name, i
        raise ValueError(f"--dataset {dataset!r}: this model was trained on {self.datasets}")

    def spec(self, batches):
        """One HierarchySpec for all rows of `batches`: `exact_spec` in the model's conv form."""
        return exact_spec(batches, self.config.sparse)

    def new_votes(self, rows):
        """Zero vote table (rows, K) on the device (rows rounded up: fewer compiles)."""
        import jax.numpy as jnp

        return jnp.zeros((_round_up(rows, 1024), self.model.class_mask.shape[1]), jnp.float32)

    def vote(self, votes, batch, spec):
        """votes + the batch's softmax at each row site's `index` (the trainer's vote step; `spec` is
        `exact_spec` of these very batches, so nothing is ever beyond its capacities)."""
        from ppt_jax.train import step

        if spec not in self._steps:
            self._steps[spec] = step.make_vote_step(self.model, spec, self._mesh)
        keys = ("grid_coord", "mask", "feat", "condition", "index")
        return self._steps[spec](self.variables, votes, {k: batch[k] for k in keys})[0]


# ----------------------------------------------------------------------------- scenes


def _as_scene(cloud, dataset):
    """Cloud -> the shard-scene dict the pipeline's test-time functions take (no labels)."""
    return {"scene": cloud.name, "dataset": dataset, "coord": model_coord(cloud.coord),
            "color": cloud.color, "normal": cloud.normal, "segment": np.full(len(cloud.coord), -1, np.int32)}


def _as_points(cloud):
    """Cloud -> the float per-point dict of the pipeline's transforms."""
    return {"coord": model_coord(cloud.coord), "color": cloud.color.astype(np.float32),
            "normal": cloud.normal,
            "segment": np.full(len(cloud.coord), -1, np.int32)}


def _single_view(predictor, cloud, condition):
    """Batches of one grid sampling (first point of each voxel) and each point's row site."""
    from ppt_jax.data import augment, pipeline

    scene = augment.center_shift(_as_points(cloud), apply_z=True)
    grid, order, starts, _ = augment.voxelize(scene["coord"], predictor.grid_size)
    pick = order[starts]
    row = augment.center_shift({**augment.take(scene, pick), "grid_coord": grid[pick]},
                               apply_z=False)
    grid_coord, mask, feat, _ = pipeline.pad_row(row, _round_up(len(pick), 1024),
                                                 predictor.config.data.color_norm)
    batch = {"grid_coord": grid_coord[None], "mask": mask[None], "feat": feat[None],
             "condition": np.array([condition], np.int32),
             "index": np.where(mask, np.arange(len(mask)), -1).astype(np.int32)[None]}
    return [batch], augment.voxel_inverse(order, starts, len(cloud.coord))


def _voting_views(predictor, cloud, dataset, condition, batch_size):
    """The pipeline's 13 views x fragments; rows index points directly."""
    import ml_collections

    from ppt_jax.data import augment, pipeline

    centred = augment.center_shift(_as_points(cloud), apply_z=True)
    sites = max(len(augment.voxelize(v["coord"], predictor.grid_size)[2])
                for v in pipeline.tta_views(centred))
    cfg = ml_collections.ConfigDict(predictor.config.data.to_dict())
    cfg.eval_num_sites = _round_up(sites, 1024)
    cfg.test_batch_size = batch_size
    batches = list(pipeline.scene_fragments(_as_scene(cloud, dataset), cfg, condition,
                                            where=cloud.source))
    return batches, np.arange(len(cloud.coord))


def predict_cloud(predictor, cloud, dataset, vote=False, batch_size=4):
    """Per-point (label in `dataset`'s order, confidence) for one Cloud."""
    name, condition = predictor.condition(dataset)
    if vote:
        batches, point_row = _voting_views(predictor, cloud, name, condition, batch_size)
    else:
        batches, point_row = _single_view(predictor, cloud, condition)
    spec = predictor.spec(batches)
    votes = predictor.new_votes(int(point_row.max()) + 1)
    for batch in batches:
        votes = predictor.vote(votes, batch, spec)
    votes = np.asarray(votes, np.float64)[point_row][:, :labels.num_classes(name)]
    label = votes.argmax(1).astype(np.int32)
    confidence = (votes.max(1) / np.maximum(votes.sum(1), 1e-12)).astype(np.float32)
    return label, confidence


def write_outputs(out_dir, cloud, dataset, label, confidence):
    """`<out>/<scene>.ply` (class colours, label, confidence) and `<out>/<scene>.png`."""
    os.makedirs(out_dir, exist_ok=True)
    rgb = render.colorize(label, dataset)
    vertex = {"x": cloud.coord[:, 0], "y": cloud.coord[:, 1], "z": cloud.coord[:, 2],
              "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2],
              "label": label.astype(np.int32), "confidence": confidence.astype(np.float32)}
    ply_path = os.path.join(out_dir, f"{cloud.name}.ply")
    ply.write_ply(ply_path, vertex)
    png_path = render.render_views(os.path.join(out_dir, f"{cloud.name}.png"), cloud.coord, label,
                                   dataset, title=f"{cloud.name}: {dataset} prediction, "
                                                  f"{len(label)} points")
    return ply_path, png_path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ppt_jax.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="exported model directory (--mode export)")
    parser.add_argument("--dataset", required=True,
                        help=f"label space and prompt: one of the model's datasets {labels.DATASETS}")
    parser.add_argument("--input", required=True, help="a .ply, a .tfrecord shard, or a directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vote", action="store_true", help="13-view test-time voting (slower)")
    parser.add_argument("--batch_size", type=int, default=4, help="fragments per forward pass (--vote)")
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()         # before JAX starts its thread pools
    try:
        predictor = Predictor(args.checkpoint)
        dataset, _ = predictor.condition(args.dataset)
        files = input_files(args.input)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = []
    for file in files:      # a bad file is reported and skipped; the others are still labelled
        try:
            for cloud in read_clouds(file):
                label, confidence = predict_cloud(predictor, cloud, dataset, args.vote,
                                                  args.batch_size)
                ply_path, png_path = write_outputs(args.out, cloud, dataset, label, confidence)
                print(f"{cloud.source}: {len(label)} points -> {ply_path}, {png_path}", flush=True)
        except (InputError, ValueError) as err:
            print(f"error: {err} (skipped)", file=sys.stderr, flush=True)
            failed.append(file)
    if failed:
        print(f"error: {len(failed)} of {len(files)} input files failed and were skipped: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 2 if len(failed) == len(files) else 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
