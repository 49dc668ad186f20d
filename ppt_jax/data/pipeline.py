"""The tf.data input pipeline: shards -> augmented, statically shaped numpy batches (design.md §1, §6).

Training (`train_dataset`): for global step t and global row b, a pure function of (config, t, b)
picks the dataset (the reference's ratio round-robin, `schedule.RatioSchedule`), the scene (a fresh
seeded permutation per pass, `schedule.pass_scenes`), and the scene's augmentation seed
(seed, dataset, epoch, restart, scene, role). tf.data runs these rows through `tf.numpy_function` with
`num_parallel_calls` (deterministic order), batches and prefetches. Resuming is re-creating the
iterator at `start_step` (its `state()` is `{"step": t}`): nothing is replayed, no step is skipped.
Shuffling is a full permutation per pass (no shuffle buffer); scenes are read by record offset
(`records.SceneIndex`).

Hosts: `batch_size` is the GLOBAL batch (as the reference's `batch_size`, split over its GPUs). Host p
of P computes rows [p * B/P, (p + 1) * B/P) of every global batch, which are the rows its devices own
on a mesh laid out in `jax.devices()` order. The global batch therefore does not depend on how many
processes read it: P hosts together train exactly what one host does.

The "points" the transforms see are the shard's stored sites (one real point per 1 cm voxel,
`schema`), not the raw scans: the 2 cm GridSample then picks a random stored site per voxel, where
the reference picks a random raw point.

Static shapes: every row has N = `num_sites` sites. After the reference's per-dataset SphereCrop, a row
with more than N sites is sphere-cropped to N, and the removed sites are counted in `cropped_sites`;
so are the far sites of the rare row whose coarse levels exceed the trainer's level budgets
(`fit_levels`, `level_sites`: the sparse hierarchy's static capacities); shorter rows are padded
(mask False, zeros, segment -1). `batch_metrics(batch)` gives the padding waste and crop counts for
logging.

Mix3D with static shapes (a deviation from the reference, docs/reference.md §6): the reference merges
pairs of scenes of a batch into one cloud with probability `mix_prob` (B scenes -> B/2 clouds). Here a
mixed batch (probability `mix_prob` per step, from (seed, step)) keeps B rows, and each row overlays two
independently augmented scenes of its own dataset in the same frame (no re-voxelisation), each
sphere-cropped to N // 2 sites; a site of the second scene at a grid_coord the first already occupies
is dropped, so a row is a set of grid coordinates. The second scene of a row is the scene at the same
position in a second permutation of the pass's scenes (never the row's own scene when the dataset has
two or more), so a mixed step reads 2B scenes as more, smaller crops, with the same number of sites per
step as an unmixed one, and the epoch accounting does not depend on which steps were mixed.

Evaluation (`eval_dataset`): no augmentation; CenterShift, one seeded random point per 2 cm voxel
(the reference's validation GridSample), CenterShift(no z); `inverse` maps every original point to its
row site (composing the shard's point -> stored site map), `origin_segment` is every original point's
label; both padded to M = `eval_num_points` with -1. `fragment_dataset` yields, per scene, the 13
test-time views x all GridSample test fragments batched in (B, N) rows with `index` (the stored site of
each row site, -1 at padding) and the scene's `inverse`, for softmax voting at full resolution.

`config.data` fields: `ppt_jax/data/config.py` (TensorFlow-free, so that reading a config never loads it).
"""

import functools

import numpy as np
import tensorflow as tf

from ppt_jax import labels
from ppt_jax.data import augment, records, schedule, schema
from ppt_jax.data.config import COLOR_NORMS, check_config, fail

# docs/reference.md §8: rotations about z x scales, then one flip of x and y.
TTA_VIEWS = tuple((angle * np.pi, scale, False) for scale in (1.0, 0.95, 1.05)
                   for angle in (0.0, 0.5, 1.0, 1.5)) + ((0.0, 1.0, True),)
TRAIN_KEYS = ("grid_coord", "mask", "feat", "segment", "condition", "cropped_sites")
EVAL_KEYS = ("grid_coord", "mask", "feat", "segment", "condition", "inverse", "origin_segment")



def _condition(cfg, name):
    if name not in tuple(cfg.datasets):
        fail("datasets", f"{name!r} is not among {tuple(cfg.datasets)}: it has no condition index")
    return tuple(cfg.datasets).index(name)


def _open_index(split_dir, name, cfg):
    index = records.SceneIndex(split_dir, verify_sha256=cfg.verify_sha256)
    if index.dataset != name:
        raise ValueError(f"{split_dir}: manifest says dataset {index.dataset!r}, the config uses it "
                         f"as {name!r}")
    return index


def _cloud(scene, where):
    """Shard scene -> float cloud for the transforms (`site` = row in the shard), after checks that
    would otherwise surface as NaN losses or out-of-range gathers far from their cause."""
    where = f"{where} ({scene['scene']!r})"
    if len(scene["coord"]) == 0:
        raise ValueError(f"{where}: scene has no sites")
    if not np.isfinite(scene["coord"]).all():
        raise ValueError(f"{where}: non-finite coordinates")
    segment, num_classes = scene["segment"], labels.num_classes(scene["dataset"])
    if segment.min() < -1 or segment.max() >= num_classes:
        raise ValueError(f"{where}: labels in [{segment.min()}, {segment.max()}] outside "
                         f"[-1, {num_classes}) of {scene['dataset']}")
    return {"coord": scene["coord"].astype(np.float32), "color": scene["color"].astype(np.float32),
            "normal": scene["normal"].astype(np.float32), "segment": scene["segment"],
            "site": np.arange(len(scene["coord"]), dtype=np.int32)}


def _crop_budget_fn(cfg, name):
    return functools.partial(augment.reference_crop_budget,
                             point_max=dict(cfg.crop_point_max).get(name),
                             sample_rate=dict(cfg.crop_sample_rate).get(name))


def merge_mix3d(first, second):
    """Overlay two clouds; drop the second's sites whose grid_coord the first already has."""
    grid = np.concatenate([first["grid_coord"], second["grid_coord"]])
    _, keep = np.unique(schema.ravel_grid(grid), return_index=True)  # first occurrence wins
    merged = {k: np.concatenate([first[k], second[k]]) for k in first}
    return augment.take(merged, np.sort(keep))


def align_grid(cloud, multiple):
    """Shift grid_coord towards 0 by a multiple of `multiple` per axis.

    A crop keeps the grid coordinates of the whole scene (reference), which can exceed the sparse
    engine's bound for long rooms; shifting by a multiple of 2^L leaves every stride-2 level's voxel
    grouping, hence the network's output, exactly unchanged.
    """
    lo = augment.bounds(cloud["grid_coord"])[0]
    return {**cloud, "grid_coord": cloud["grid_coord"] - (lo // multiple) * multiple}


def fit_levels(cloud, level_sites):
    """Crop a row whose coarse levels hold more sites than `level_sites` (per level l = 1, 2, ...: the
    distinct floor(grid_coord / 2**l), what the sparse hierarchy builds): keep the longest run of its sites,
    nearest its centroid first, whose every level fits (a SphereCrop to the level budgets). Returns the
    cloud, in its own order, and the number of sites dropped.

    The trainer passes its HierarchySpec's coarse capacities, sized from measured crops with a small
    margin (`sparse.sizing`): coarse levels of augmented crops vary by 15-20 %, so a margin that fits every
    crop pads every step; with this crop the rare larger one (~1 % of rows) loses a few far sites instead,
    counted in `cropped_sites`."""
    grid = cloud["grid_coord"]
    over = [len(np.unique(schema.ravel_grid(grid >> level))) > budget
            for level, budget in enumerate(level_sites, 1)]
    if not any(over):
        return cloud, 0
    order = np.argsort(np.sum((grid - grid.mean(0)) ** 2, axis=1), kind="stable")
    keep = len(order)
    for level, budget in enumerate(level_sites, 1):
        keys = schema.ravel_grid(grid[order] >> level)
        new = np.zeros(len(keys), bool)
        new[np.unique(keys, return_index=True)[1]] = True      # a site that opens a level-l cell
        keep = min(keep, int(np.searchsorted(np.cumsum(new), budget, side="right")))
    return augment.take(cloud, np.sort(order[:keep])), len(order) - keep


def fill_row(cloud, grid, mask, feat, segment, color_norm):
    """Write a cloud with `grid_coord` into the first rows of preset padded row arrays (N, ...)."""
    n = len(cloud["coord"])
    if n > len(mask):
        raise ValueError(f"row has {n} sites > budget {len(mask)}")
    grid[:n] = cloud["grid_coord"]
    mask[:n] = True
    divisor, offset = COLOR_NORMS[color_norm]
    feat[:n, :3] = cloud["color"] / divisor + offset  # NormalizeColor
    feat[:n, 3:] = cloud["normal"]
    segment[:n] = cloud["segment"]


def pad_row(cloud, num_sites, color_norm):
    """Cloud with `grid_coord` -> fixed-size (grid_coord, mask, feat, segment) with padding."""
    row = (np.zeros((num_sites, 3), np.int32), np.zeros(num_sites, bool),
           np.zeros((num_sites, 6), np.float32), np.full(num_sites, -1, np.int32))
    fill_row(cloud, *row, color_norm)
    return row


def _pad_points(values, size, what):
    if len(values) > size:
        raise ValueError(f"{what}: {len(values)} points > config.data.eval_num_points = {size}; "
                         f"raise it")
    out = np.full(size, -1, np.int32)
    out[:len(values)] = values
    return out


class _TrainRows:
    """The pure function (global row index) -> one training row."""

    def __init__(self, cfg, process_index=0, process_count=1, level_sites=()):
        check_config(cfg)
        self.level_sites = tuple(int(n) for n in level_sites)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.cfg = cfg
        self.local_batch = host_rows(cfg.batch_size, process_count, "batch_size")
        self.first_row = process_index * self.local_batch
        self.names = tuple(cfg.datasets)
        self.indexes = [_open_index(cfg.train_dirs[name], name, cfg) for name in self.names]
        self.crop_fns = [_crop_budget_fn(cfg, name) for name in self.names]
        self.schedule = _ratio_schedule(cfg, [len(index) for index in self.indexes])

    def _scenes(self, d, key):
        return schedule.pass_scenes(len(self.indexes[d]), self.cfg.seed, key)

    def global_row(self, local_row):
        """This host's n-th row -> its index among all rows of all global batches."""
        step, r = divmod(int(local_row), self.local_batch)
        return step * self.cfg.batch_size + self.first_row + r

    def _sample(self, d, scene, key, role, budget):
        where = f"{self.names[d]} scene #{scene}"
        cloud = _cloud(self.indexes[d].read(scene), where)
        rng = np.random.default_rng([self.cfg.seed, 3, *key, scene, role])
        return augment.train_transform(cloud, rng, self.crop_fns[d], budget, self.cfg.grid_size)

    def __call__(self, local_row):
        cfg = self.cfg
        row = self.global_row(local_row)
        step, b = divmod(row, cfg.batch_size)
        if cfg.mixing == "round_robin":
            d, epoch, restart, pos = self.schedule.locate(step)
            pos = pos * cfg.batch_size + b
        else:
            d, epoch, restart, pos = self.schedule.locate(row)
        key = (d, epoch, restart)
        scenes = self._scenes(d, key)
        mixed = np.random.default_rng([cfg.seed, 1, step]).random() < cfg.mix_prob
        if not mixed:
            cloud, cropped = self._sample(d, scenes[pos], key, 0, cfg.num_sites)
        else:
            partners = np.random.default_rng([cfg.seed, 2, *key]).permutation(scenes)
            partner = partners[pos]
            if partner == scenes[pos] and len(scenes) > 1:
                partner = partners[(pos + 1) % len(partners)]
            first, cropped_a = self._sample(d, scenes[pos], key, 0, cfg.num_sites // 2)
            second, cropped_b = self._sample(d, partner, key, 1, cfg.num_sites // 2)
            cloud, cropped = merge_mix3d(first, second), cropped_a + cropped_b
        cloud, fitted = fit_levels(align_grid(cloud, cfg.grid_align), self.level_sites)
        return (*pad_row(cloud, cfg.num_sites, cfg.color_norm), np.int32(d), np.int32(cropped + fitted))


def _ratio_schedule(cfg, num_scenes):
    """The mixing schedule of `cfg` for datasets of `num_scenes` scenes each (units: scenes or
    whole batches, per `cfg.mixing`)."""
    units = [n if cfg.mixing == "per_sample" else n // cfg.batch_size for n in num_scenes]
    for name, scenes, n in zip(cfg.datasets, num_scenes, units):
        if n < 1:
            raise ValueError(f"{name} ({cfg.train_dirs[name]}): {scenes} scenes cannot fill one "
                             f"batch of config.data.batch_size={cfg.batch_size} rows")
    return schedule.RatioSchedule(units, tuple(cfg.ratios))


def _numpy_rows(fn, shapes, dtypes, keys, num_parallel_calls):
    """tf.data map: int64 row index -> dict of fixed-shape tensors computed by `fn` in numpy."""
    def map_fn(i):
        outs = tf.numpy_function(fn, [i], dtypes, stateful=False)
        return {k: tf.ensure_shape(o, s) for k, o, s in zip(keys, outs, shapes)}
    return lambda ds: ds.map(map_fn, num_parallel_calls=num_parallel_calls, deterministic=True)


def _finish(ds, batch_size, prefetch):
    """Batch and prefetch, deterministic order, autotuning off: the tuning thread sleeps for a period
    that doubles up to 60 s, and freeing the iterator waits out its sleep (a 21-step run sat 26-41 s at
    exit; an iterator held 45 s took 37 s to delete). With it off, throughput on 2 cores is the same
    (benchmarks/README.md, input pipeline)."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch).with_options(options)


class TrainIterator:
    """Iterator of training batches (numpy dicts: design.md §1 keys plus `cropped_sites`) from step
    `start_step`, endless or `steps` long.

    `state()` is what the trainer checkpoints; `train_dataset(..., start_step=state["step"])` resumes.
    `level_sites`: coarse-level site budgets of every row (`fit_levels`); () crops to `num_sites` only.
    Readers that need a known number of batches should bound it and read it to its end: an iterator
    dropped while tf.data still runs rows in Python (`tf.numpy_function`) waits for them in its
    destructor.
    """

    def __init__(self, cfg, process_index, process_count, start_step, steps=None, level_sites=()):
        rows = _TrainRows(cfg, process_index, process_count, level_sites)
        n, b = cfg.num_sites, rows.local_batch
        shapes = ((n, 3), (n,), (n, 6), (n,), (), ())
        dtypes = (tf.int32, tf.bool, tf.float32, tf.int32, tf.int32, tf.int32)
        end = np.iinfo(np.int64).max if steps is None else (int(start_step) + int(steps)) * b
        ds = tf.data.Dataset.range(int(start_step) * b, end)
        ds = ds.apply(_numpy_rows(rows, shapes, dtypes, TRAIN_KEYS, cfg.num_parallel_calls))
        self.schedule = rows.schedule
        self.step = int(start_step)
        self._it = _finish(ds, b, cfg.prefetch).as_numpy_iterator()

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.step += 1
        return batch

    def state(self):
        return {"step": self.step}


def train_dataset(cfg, process_index=0, process_count=1, start_step=0, steps=None, level_sites=()):
    """This host's rows of the global training batches from step `start_step` (see module docstring):
    (batch_size / process_count, ...) numpy arrays per step; endless, or `steps` batches; rows cropped
    to the coarse-level budgets `level_sites` (`fit_levels`)."""
    return TrainIterator(cfg, process_index, process_count, start_step, steps, level_sites)


def steps_per_epoch(cfg):
    """Steps in one epoch (one pass of the first dataset), as in the reference's loader length
    (per-sample mode: samples per epoch // batch_size, batches may straddle epochs). Reads the
    scene counts of the train manifests only (no shard is opened)."""
    counts = [schema.read_manifest(cfg.train_dirs[name])["num_scenes"] for name in cfg.datasets]
    return _ratio_schedule(cfg, counts).epoch_length // (
        cfg.batch_size if cfg.mixing == "per_sample" else 1)


def batch_metrics(batch):
    """Scalars to log for one batch: padding waste and sites lost to the static budget."""
    mask = np.asarray(batch["mask"])
    return {"data/padding_fraction": float(1.0 - mask.mean()),
            "data/sites": int(mask.sum()),
            "data/cropped_sites": int(np.asarray(batch["cropped_sites"]).sum())}


def host_rows(batch_size, process_count, field):
    """Rows of a global batch that each host reads; the batch must split evenly."""
    if batch_size % process_count:
        fail(field, f"{batch_size} rows per global batch do not split over {process_count} hosts")
    return batch_size // process_count


def _host_positions(num_scenes, batch_size, process_index, process_count):
    """Scene positions of this host's rows of every global batch of `batch_size` rows (the same
    slicing as training), -1 (empty rows) past the last scene; equal length on all hosts."""
    local = host_rows(batch_size, process_count, "eval_batch_size")
    batches = -(-num_scenes // batch_size)
    rows = np.arange(batches * batch_size).reshape(batches, batch_size)
    mine = rows[:, process_index * local:(process_index + 1) * local].reshape(-1)
    return np.where(mine < num_scenes, mine, -1).astype(np.int64)


def _full_res(scene, where):
    if len(scene["inverse"]) == 0:
        raise ValueError(f"{where}: scene {scene['scene']!r} has no full-resolution fields "
                         f"(inverse, origin_segment): write val/test splits with keep_full_res")
    return scene["inverse"], scene["origin_segment"]


class _EvalRows:
    """(scene position or -1) -> one validation row at full resolution."""

    def __init__(self, cfg, index, condition):
        self.cfg, self.index, self.condition = cfg, index, condition

    def __call__(self, position):
        cfg, position = self.cfg, int(position)
        n, m = cfg.eval_num_sites, cfg.eval_num_points
        if position < 0:
            empty = {"coord": np.zeros((0, 3)), "grid_coord": np.zeros((0, 3), np.int32),
                     "color": np.zeros((0, 3)), "normal": np.zeros((0, 3)),
                     "segment": np.zeros(0, np.int32)}
            return (*pad_row(empty, n, cfg.color_norm), np.int32(self.condition), np.full(m, -1, np.int32),
                    np.full(m, -1, np.int32))
        scene = self.index.read(position)
        where = f"{self.index.split_dir} scene #{position}"
        inverse, origin_segment = _full_res(scene, where)
        cloud = augment.center_shift(_cloud(scene, where), apply_z=True)
        rng = np.random.default_rng([cfg.seed, 4, position])
        cloud, site_to_row = augment.grid_sample_train(cloud, rng, cfg.grid_size, return_inverse=True)
        cloud = augment.center_shift(cloud, apply_z=False)
        if len(cloud["coord"]) > n:
            raise ValueError(f"{where}: {len(cloud['coord'])} sites at {cfg.grid_size} m > "
                             f"config.data.eval_num_sites = {n}; raise it")
        return (*pad_row(cloud, n, cfg.color_norm), np.int32(self.condition),
                _pad_points(site_to_row[inverse], m, where), _pad_points(origin_segment, m, where))


def eval_dataset(split_dir, dataset_name, cfg, process_index=0, process_count=1):
    """Validation batches of one split (design.md §1 keys plus `inverse`, `origin_segment`).

    One pass; every host yields the same number of batches (rows past the end are empty: mask False,
    inverse -1), so multi-host evaluation stays in lockstep.
    """
    check_config(cfg, train=False)
    rows = _EvalRows(cfg, _open_index(split_dir, dataset_name, cfg), _condition(cfg, dataset_name))
    index = rows.index
    n, m = cfg.eval_num_sites, cfg.eval_num_points
    shapes = ((n, 3), (n,), (n, 6), (n,), (), (m,), (m,))
    dtypes = (tf.int32, tf.bool, tf.float32, tf.int32, tf.int32, tf.int32, tf.int32)
    positions = _host_positions(len(index), cfg.eval_batch_size, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(positions)
    ds = ds.apply(_numpy_rows(rows, shapes, dtypes, EVAL_KEYS, cfg.num_parallel_calls))
    local = cfg.eval_batch_size // process_count
    return _finish(ds, local, cfg.prefetch).as_numpy_iterator()


def tta_views(cloud):
    """The 13 test-time views of a centred cloud (docs/reference.md §8)."""
    for angle, scale, flipped in TTA_VIEWS:
        view = augment.flip(cloud, True, True) if flipped else augment.rotate(cloud, angle, "z",
                                                                              (0, 0, 0))
        yield {**view, "coord": view["coord"] * np.float32(scale)}


def _empty_batch(batch_size, num_sites, condition):
    return {"grid_coord": np.zeros((batch_size, num_sites, 3), np.int32),
            "mask": np.zeros((batch_size, num_sites), bool),
            "feat": np.zeros((batch_size, num_sites, 6), np.float32),
            "segment": np.full((batch_size, num_sites), -1, np.int32),
            "condition": np.full(batch_size, condition, np.int32),
            "index": np.full((batch_size, num_sites), -1, np.int32)}


def _fragment_rows(scene, cfg, where):
    """The scene's fragment clouds, view by view (`site` = each point's stored site)."""
    cloud = augment.center_shift(_cloud(scene, where), apply_z=True)
    for view in tta_views(cloud):
        for fragment, _ in augment.grid_sample_test(view, cfg.grid_size):
            if len(fragment["coord"]) > cfg.eval_num_sites:
                raise ValueError(f"{where}: fragment of {len(fragment['coord'])} sites > "
                                 f"config.data.eval_num_sites = {cfg.eval_num_sites}; raise it")
            yield augment.center_shift(fragment, apply_z=False)


def scene_fragments(scene, cfg, condition, where="scene"):
    """One scene's 13 views x GridSample test fragments as (B, N) batches, built lazily (a scene has
    up to ~100 fragments); the last batch is filled with empty rows (mask False, index -1)."""
    size, num_sites = cfg.test_batch_size, cfg.eval_num_sites
    batch, r = None, 0
    for cloud in _fragment_rows(scene, cfg, where):
        if r == 0:
            batch = _empty_batch(size, num_sites, condition)
        fill_row(cloud, batch["grid_coord"][r], batch["mask"][r], batch["feat"][r],
                 batch["segment"][r], cfg.color_norm)
        batch["index"][r, :len(cloud["site"])] = cloud["site"]
        r = (r + 1) % size
        if r == 0:
            yield batch
    if r:
        yield batch


def fragment_dataset(split_dir, dataset_name, cfg, process_index=0, process_count=1):
    """Per scene of this host: {"scene", "num_sites", "inverse", "origin_segment", "batches"}.

    `batches` is an iterator of (B, N) rows with design.md §1 keys plus `index` (B, N): the stored site
    of each row site (-1 at padding). Hosts may get different scene counts (scenes are dealt
    round-robin). Voting: add each row's softmax into `votes[index]` (num_sites, K) over all
    batches, then the full-resolution prediction is `argmax(votes, -1)[inverse]`. Every stored site
    (hence every original point) is in at least one fragment of every view.
    """
    check_config(cfg, train=False)
    condition = _condition(cfg, dataset_name)
    index = _open_index(split_dir, dataset_name, cfg)
    for position in range(process_index, len(index), process_count):
        scene = index.read(position)
        where = f"{split_dir} scene #{position}"
        inverse, origin_segment = _full_res(scene, where)
        yield {"scene": scene["scene"], "num_sites": len(scene["coord"]), "inverse": inverse,
               "origin_segment": origin_segment,
               "batches": scene_fragments(scene, cfg, condition, where)}
