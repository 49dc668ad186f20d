"""Everything a run needs before its first step: data location, text table, model, optimizer, state.

The one place that wires the parts together (design.md): config -> shards (or the embedded synthetic
default) -> text table -> PPT model -> sparse hierarchy spec -> optimizer -> sharded train state.
"""

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from ppt_jax import labels, models, sparse, text
from ppt_jax.data import schema
from ppt_jax.train import optim
from ppt_jax.train.sharding import replicated
from ppt_jax.train.step import TrainState, build_hierarchies

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

log = logging.getLogger(__name__)


def _has_manifest(split_dir):
    return bool(split_dir) and (epath.Path(split_dir) / schema.MANIFEST_NAME).exists()


def merge(config, overrides):
    """Recursively set `overrides` (nested dict/ConfigDict) into `config`."""
    for key, value in overrides.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(
                config.get(key), ml_collections.ConfigDict):
            merge(config[key], value)
        else:
            config[key] = value


def resolve_data(config, workdir):
    """Use the configured shards, or say so and switch to the embedded synthetic default.

    The synthetic data is generated into `<workdir>/synthetic` on first use (data_prep.synthetic) and
    the recipe is scaled by `config.synthetic.overrides` so that it runs on a small CPU.
    Returns the config actually used (a copy) and whether it is synthetic.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    names = tuple(config.data.datasets)
    entries = [(f"config.data.train_dirs.{n}", dict(config.data.train_dirs).get(n, ""))
               for n in names]
    entries += [(f"config.eval.val_dirs.{n}", dict(config.eval.val_dirs).get(n, ""))
                for n in config.eval.datasets]
    absent = [(field, d) for field, d in entries if not _has_manifest(d)]
    if not absent:
        return config, False
    if len(absent) < len(entries):
        # Some shards exist: the user configured data, and these paths are wrong (a typo must not
        # switch every dataset to synthetic data).
        raise FileNotFoundError("; ".join(f"{field} = {d!r}: no shard manifest there" for field, d
                                          in absent) + " (the other configured splits were found):"
                                                       " fix the path or run data_prep")
    missing = [d or "(unset)" for _, d in absent]
    if not config.synthetic.enabled:
        raise FileNotFoundError(f"no shards at {missing} (config.data.train_dirs / config.eval.val_dirs)"
                                f" and config.synthetic.enabled is False: run data_prep first")
    if "://" in str(workdir):
        raise ValueError(f"--workdir {workdir}: the embedded synthetic default is written with the "
                         f"local file system (data_prep); use a local --workdir, or shards from "
                         f"data_prep in config.data.train_dirs / config.eval.val_dirs (missing: "
                         f"{', '.join(missing)})")
    from data_prep import synthetic  # the embedded default only; real runs never import data_prep
    out = str(epath.Path(workdir) / "synthetic")
    log.warning("Configured shards not found: %s. Running the same recipe on synthetic "
                    "multi-domain data in %s (scaled by config.synthetic.overrides).",
                    ", ".join(missing), out)
    s = config.synthetic
    synthetic.generate(out, scenes=tuple(s.scenes), val_scenes=tuple(s.val_scenes), seed=s.seed,
                       density=s.density, workers=s.workers, progress=False)
    merge(config, s.overrides.to_dict())
    config.data.train_dirs = {n: os.path.join(out, n, "train") for n in names}
    config.eval.val_dirs = {n: os.path.join(out, n, "val") for n in config.eval.datasets}
    return config, True


def _export_text_dir(config):
    """`<config.init.export_dir>/text` when that export carries a text table (an imported checkpoint's
    own CLIP table, models/pointcept_import.py): the model is then fed the table it was trained with."""
    path = epath.Path(config.init.export_dir) / "text" if config.init.export_dir else None
    return str(path) if path is not None and path.is_dir() else ""


def text_table(config, workdir):
    """(table or None, info dict). CLIP unavailable -> the configured fallback encoder, said loudly."""
    t = config.text
    info = {"requested": t.encoder, "used": None, "note": "", "reason": ""}
    if config.model.head != "language":
        return None, info
    if not t.allow_download:
        # Read before huggingface_hub is first imported (ppt_jax.text imports it lazily).
        os.environ["HF_HUB_OFFLINE"] = "1"
    kwargs = dict(names=labels.UNION_NAMES, template=t.template,
                  cache_dir=t.cache_dir or _export_text_dir(config) or str(epath.Path(workdir) / "text"))
    try:
        table = text.class_embeddings(t.encoder, model_path=t.model_path or None,
                                      bpe_path=t.bpe_path or None, **kwargs)
        info["used"] = t.encoder
    except text.EncoderUnavailable as e:
        if not t.fallback:
            raise
        info["used"], info["reason"] = t.fallback, str(e)
        info["note"] = (f"text encoder {t.fallback}, NOT {t.encoder}: {t.encoder} weights unavailable"
                        f" (config.text.fallback)")
        log.warning("TEXT ENCODER: %s. %s", info["note"], e)
        table = text.class_embeddings(t.fallback, **kwargs)
    return table, info


def build_model(config, table):
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, got {m.dtype!r}")
    return models.PPT(
        conditions=tuple(m.conditions), channels=tuple(m.channels), layers=tuple(m.layers),
        base_channels=m.base_channels, context_channels=m.context_channels, adapter=m.adapter,
        norm_decouple=m.norm_decouple, norm_adaptive=m.norm_adaptive, zero_init=m.zero_init,
        bn_group_size=m.bn_group_size, head=m.head, text_table=table, s3dis_order=m.s3dis_order,
        dtype=DTYPES[m.dtype], **_backbone_fields(m))


def _backbone_fields(m):
    """PPT's backbone choice and loss; exports written before these settings existed are SpUNet + CE."""
    ptv3 = dict(m.get("ptv3", {}))
    return dict(arch=m.get("backbone", "spunet"), criteria=tuple(m.get("criteria", ("cross_entropy",))),
                ptv3=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in ptv3.items())))


def hierarchy_spec(config, num_sites, stats=None):
    """HierarchySpec for crops of `num_sites` sites, sized from measured level sizes (`level_stats`) with
    `config.sparse.capacity_margin`, in the `config.sparse.conv_form`; without stats (shape-only uses,
    e.g. initialising variables) every level holds `num_sites`."""
    if stats is None:
        return sparse.HierarchySpec(capacities=(int(num_sites),) * sparse.sizing.LEVELS,
                                    search_method=config.sparse.search_method)
    return sparse.sizing.spec_from_stats(stats, int(num_sites), form=config.sparse.conv_form,
                                         margin=config.sparse.capacity_margin,
                                         search_method=config.sparse.search_method)


def train_crops(config):
    """The first `config.sparse.sizing_crops` training crops, as the train step sees them (augmented)."""
    from ppt_jax import data
    batches, crops = data.train_dataset(config.data, 0, 1, start_step=0), []
    while len(crops) < config.sparse.sizing_crops:
        b = next(batches)
        crops += [g[m] for g, m in zip(b["grid_coord"], b["mask"]) if m.any()]
    return crops


def eval_crops(config):
    """Every validation row of every `config.eval.datasets` split (capacities must fit them all)."""
    from ppt_jax import data
    crops = []
    for name in config.eval.datasets:
        for b in data.eval_dataset(config.eval.val_dirs[name], name, config.data):
            crops += [g[m] for g, m in zip(b["grid_coord"], b["mask"]) if m.any()]
    return crops


def level_stats(workdir, what, crops_fn):
    """Sites and 3x3x3 pairs per level of sample crops (`sparse.sizing.measure`), measured once and kept in
    <workdir>/level_sizes_<what>.json, so that a restarted or resumed run builds the same HierarchySpec
    (and compiles the same step). Every process measures the same rows; process 0 writes the file."""
    path = epath.Path(workdir) / f"level_sizes_{what}.json"
    if path.exists():
        return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    stats = sparse.sizing.measure(crops_fn())
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text(json.dumps({k: v.tolist() for k, v in stats.items()}))
        tmp.rename(path)
    return stats


def log_padding(spec, stats, what):
    """One line per level: capacity, largest measured need and the padding it costs (goal < 10 %)."""
    for r in sparse.sizing.padding_report(spec, stats):
        log.info("%s level %d: %d sites (largest crop %d, padding %.0f%%)%s", what, r["level"], r["sites"],
                 r["sites_needed"], 100 * r["site_waste"],
                 f", {r['pairs']} pairs (largest {r['pairs_needed']}, padding {100 * r['pair_waste']:.0f}%)"
                 if r["pairs"] else "")


def condition_map(config):
    """Data condition (position in data.datasets) -> model condition (position in model.conditions).

    The model's conditions may be a superset of the data's datasets (fine-tuning one dataset with a
    jointly trained model): matched by name.
    """
    model_names = tuple(config.model.conditions)
    missing = [n for n in config.data.datasets if n not in model_names]
    if missing:
        raise ValueError(f"config.data.datasets {missing} are not in config.model.conditions "
                         f"{model_names}")
    return np.array([model_names.index(n) for n in config.data.datasets], np.int32)


@dataclasses.dataclass
class Run:
    config: Any
    workdir: str
    mesh: Any
    model: Any
    cond_map: np.ndarray
    text_info: dict
    synthetic: bool
    steps: dict = dataclasses.field(default_factory=dict)   # jitted eval steps, built once

    @property
    def conditions(self):
        return tuple(self.config.model.conditions)

    @property
    def num_classes(self):
        return max(labels.num_classes(n) for n in self.conditions)


def init_variables(model, config, seed):
    """Model variables from a one-row all-padding batch (shapes do not depend on the batch)."""
    n = 64
    spec = hierarchy_spec(config, n)
    batch = {"feat": jnp.zeros((1, n, 6)), "grid_coord": jnp.zeros((1, n, 3), jnp.int32),
             "mask": jnp.zeros((1, n), bool), "condition": jnp.zeros((1,), jnp.int32)}

    @jax.jit
    def init(key):
        h = build_hierarchies(batch["grid_coord"], batch["mask"], spec)
        return model.init(key, batch["feat"], h, batch["condition"], train=False)

    return init(jax.random.key(seed))


def new_state(variables, tx, seed, mesh):
    params = variables["params"]
    state = TrainState(step=jnp.int32(0), params=params,
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(seed + 1)))
    return jax.device_put(state, replicated(mesh))


def total_steps(config):
    from ppt_jax import data
    if config.train.steps > 0:
        return int(config.train.steps)
    return int(config.train.epochs * data.steps_per_epoch(config.data))


