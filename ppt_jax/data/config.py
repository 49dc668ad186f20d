"""The input pipeline's settings: `config.data`'s defaults and their checks.

TensorFlow-free on purpose: `configs/` start from `default_config()`, and a process that only reads a
config (a model benchmark, `predict`'s argument parsing) should not load TensorFlow's 0.5 GiB.

The `config.data` fields (`default_config()`):
  datasets            tuple of dataset names; a row's `condition` is its dataset's position here
  train_dirs          {name: train split directory with manifest.json}
  ratios              tuple, batches (or samples) per round for each dataset; reference (4, 2, 1)
  mixing              "round_robin": every batch from one dataset (reference) | "per_sample": every row
                      follows the ratio schedule on its own (rows of one batch may differ in condition)
  batch_size          rows per step, all hosts together (each host reads batch_size / hosts)
  num_sites           N, static sites per training row
  grid_size           2 cm sampling grid (metres)
  color_norm          the feature colour: "unit" = color / 255 (the reference's NormalizeColor since
                      Pointcept v1.6.0) | "legacy" = color / 127.5 - 1 (before it; docs/model.md)
  grid_align          train grid_coord are shifted towards 0 by multiples of this (2^4 for SpUNet's
                      four stride-2 levels: outputs unchanged, coordinates stay small after crops)
  mix_prob            Mix3D probability per batch (reference 0.8)
  crop_point_max      {name: SphereCrop point_max}  (reference: ScanNet 100000)
  crop_sample_rate    {name: SphereCrop sample_rate} (reference: S3DIS 0.6, Structured3D 0.8)
  seed                the one seed of all shuffling and augmentation
  num_parallel_calls  tf.data map parallelism (-1 = tf.data.AUTOTUNE's default; its tuning loop is off,
                      pipeline._finish); order is deterministic regardless
  prefetch            batches prefetched
  eval_batch_size     rows per validation batch, all hosts together
  eval_num_sites      static sites per eval/test row (no crop at eval: a larger scene is an error)
  eval_num_points     static full-resolution points per eval row (M)
  test_batch_size     fragment rows per test batch (test runs on one host)
  verify_sha256       also recompute each shard's manifest sha256 when a split is opened (every
                      record's CRC is checked on read in any case; records.py)
"""

import ml_collections

from ppt_jax import labels

MIXING_MODES = ("round_robin", "per_sample")
COLOR_NORMS = {"unit": (255.0, 0.0), "legacy": (127.5, -1.0)}   # feature = color / divisor + offset
DEFAULT_COLOR_NORM = "unit"


def default_config():
    """The reference's three-dataset recipe (docs/reference.md); shard directories left for the user.

    The one source of the data defaults: `configs/base.py` starts from it."""
    c = ml_collections.ConfigDict()
    c.datasets = (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS)
    c.train_dirs = {name: "" for name in c.datasets}
    c.ratios = (4, 2, 1)
    c.mixing = "round_robin"
    c.batch_size = 24               # global (all hosts), as the reference's 24 over 8 GPUs
    c.num_sites = 100_000
    c.grid_size = 0.02
    c.color_norm = DEFAULT_COLOR_NORM
    c.grid_align = 16
    c.mix_prob = 0.8
    c.crop_point_max = {labels.SCANNET: 100_000}
    c.crop_sample_rate = {labels.S3DIS: 0.6, labels.STRUCTURED3D: 0.8}
    c.seed = 0
    c.num_parallel_calls = -1
    c.prefetch = 2
    c.eval_batch_size = 1
    c.eval_num_sites = 1 << 18
    c.eval_num_points = 1 << 20
    c.test_batch_size = 8
    c.verify_sha256 = False
    return c


def fail(field, problem):
    """Raise the ValueError of a bad `config.data` setting, naming the field."""
    raise ValueError(f"config.data.{field}: {problem}")


def check_config(cfg, train=True):
    """Raise a ValueError naming the `config.data` field for every inconsistent setting."""
    names = tuple(cfg.datasets)
    if not names or len(set(names)) != len(names):
        fail("datasets", f"need distinct dataset names, got {names}")
    for name in names:
        if name not in labels.CLASS_NAMES:
            fail("datasets", f"unknown dataset {name!r}; known: {labels.DATASETS}")
    for field in ("crop_point_max", "crop_sample_rate"):  # entries of unused datasets are allowed
        for name in dict(cfg[field]):
            if name not in labels.CLASS_NAMES:
                fail(field, f"unknown dataset {name!r}; known: {labels.DATASETS}")
    both = set(dict(cfg.crop_point_max)) & set(dict(cfg.crop_sample_rate))
    if both:
        fail("crop_sample_rate", f"{sorted(both)} also have crop_point_max: give one of the two")
    for name, rate in dict(cfg.crop_sample_rate).items():
        if not 0 < rate <= 1:
            fail("crop_sample_rate", f"{name}: rate {rate} not in (0, 1]")
    if cfg.grid_size <= 0:
        fail("grid_size", f"must be positive, got {cfg.grid_size}")
    if cfg.color_norm not in COLOR_NORMS:
        fail("color_norm", f"must be one of {tuple(COLOR_NORMS)}, got {cfg.color_norm!r}")
    if cfg.grid_align < 1:
        fail("grid_align", f"must be >= 1, got {cfg.grid_align}")
    for field in ("eval_batch_size", "eval_num_sites", "eval_num_points", "test_batch_size"):
        if cfg[field] < 1:
            fail(field, f"must be >= 1, got {cfg[field]}")
    if not train:
        return
    if len(tuple(cfg.ratios)) != len(names) or any(int(r) < 1 for r in cfg.ratios):
        fail("ratios", f"need one positive integer per dataset {names}, got {tuple(cfg.ratios)}")
    if cfg.mixing not in MIXING_MODES:
        fail("mixing", f"must be one of {MIXING_MODES}, got {cfg.mixing!r}")
    if cfg.batch_size < 1:
        fail("batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.num_sites < 2:
        fail("num_sites", f"must be >= 2 (Mix3D halves it), got {cfg.num_sites}")
    if not 0 <= cfg.mix_prob <= 1:
        fail("mix_prob", f"must lie in [0, 1], got {cfg.mix_prob}")
    for name in names:
        if not cfg.train_dirs.get(name):
            fail("train_dirs", f"no shard directory for {name!r}")
