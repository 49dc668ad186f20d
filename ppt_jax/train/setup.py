"""Start-up: what a run needs before its first step, in the order the trainer asks for it.

    run = setup.prepare(config, workdir)     # mesh, text table, model, dataset -> condition map
    steps = setup.total_steps(run.config)    # from the train manifests' scene counts
    state = setup.new_state(setup.init_variables(run.model, run.config, seed), tx, seed, run.mesh)
    template = setup.abstract_state(run, tx) # shapes only: restore without data or compute
    stats = setup.level_stats(workdir, "train", ...)   # level sizes measured once from crops
    spec = setup.hierarchy_spec(config, num_sites, stats)

Nothing here touches `data_prep`: the data directories are final when the config arrives (the entry
point fills in the embedded synthetic default).
"""

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ppt_jax import distributed, files, labels, models, sparse, text
from ppt_jax.data import config as data_config
from ppt_jax.data import schema
from ppt_jax.train import sharding
from ppt_jax.train.step import TrainState, build_hierarchies

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
    """The parts of one run that every mode shares."""
    config: Any
    workdir: str
    mesh: Any
    model: Any
    cond_map: np.ndarray       # data condition -> model condition (`condition_map`)
    text_info: dict            # which text encoder was used and why (`text_table`)
    synthetic: Any = None      # the val manifests say the data is synthetic (None: not read)

    @property
    def conditions(self):
        return tuple(self.config.model.conditions)

    @property
    def num_classes(self):
        return max(labels.num_classes(n) for n in self.conditions)

    def device_batch(self, batch, keys):
        """Host rows of a pipeline batch -> the global device batch (model conditions)."""
        batch = {k: batch[k] for k in keys}
        batch["condition"] = self.cond_map[batch["condition"]]
        return sharding.global_batch(batch, self.mesh)


def prepare(config, workdir, splits=("train", "val")):
    """The mesh, the text table (process 0 first), the model and the condition map of a run whose
    `splits` ("train", "val") must exist (checked first, every missing one named)."""
    check_splits(config, splits)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh()
    for field in ("batch_size", "eval_batch_size", "test_batch_size"):
        sharding.check_host_rows(mesh, config.data[field], f"config.data.{field}")
    table, text_info = distributed.process_zero_first(lambda: text_table(config, workdir),
                                                      "ppt_jax_text_table")
    return Run(config=config, workdir=workdir, mesh=mesh, model=build_model(config, table),
               cond_map=condition_map(config), text_info=text_info,
               synthetic=data_is_synthetic(config) if "val" in splits else None)


def check_splits(config, splits):
    """FileNotFoundError naming every configured split of `splits` without a shard manifest."""
    fields = []
    if "train" in splits:
        fields += [(f"config.data.train_dirs.{n}", config.data.train_dirs[n])
                   for n in config.data.datasets]
    if "val" in splits:
        fields += [(f"config.eval.val_dirs.{n}", config.eval.val_dirs[n]) for n in config.eval.datasets]
    absent = [(field, d) for field, d in fields
              if not (d and (epath.Path(d) / schema.MANIFEST_NAME).exists())]
    if absent:
        raise FileNotFoundError("; ".join(f"{field} = {d!r}: no shard manifest there"
                                          for field, d in absent) + " (run data_prep, or fix the path)")


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
    """`models.PPT(**config.model)` with the text table; the dtype is given by name, the backbone
    choice as `backbone` (PPT.arch) and its PTv3 settings as a dict (PPT.ptv3 pairs). Exports
    written before a field existed get the model's default."""
    fields = config.model.to_dict()
    if fields["dtype"] not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {tuple(DTYPES)}, got {fields['dtype']!r}")
    fields["dtype"] = DTYPES[fields["dtype"]]
    fields["arch"] = fields.pop("backbone", models.PPT.arch)
    fields["ptv3"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                  for k, v in dict(fields.pop("ptv3", {})).items()))
    known = {f.name for f in dataclasses.fields(models.PPT)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config.model.{unknown[0]} is not a field of models.PPT")
    return models.PPT(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()},
                      text_table=table)


def hierarchy_spec(config, num_sites, stats=None, scale_to_budget=True):
    """HierarchySpec for crops of `num_sites` sites, sized from measured level sizes (`level_stats`) with
    `config.sparse.capacity_margin` (sites) and `pair_margin`, in the `config.sparse.conv_form`; without
    stats (shape-only uses, e.g. initialising variables) every level holds `num_sites`.
    scale_to_budget=False for measured rows that are all the rows there will be
    (`sparse.sizing.spec_from_stats`)."""
    if stats is None:
        return sparse.HierarchySpec(capacities=(int(num_sites),) * sparse.sizing.LEVELS,
                                    search_method=config.sparse.search_method)
    return sparse.sizing.spec_from_stats(stats, int(num_sites), form=config.sparse.conv_form,
                                         margin=config.sparse.capacity_margin,
                                         pair_margin=config.sparse.pair_margin,
                                         search_method=config.sparse.search_method,
                                         scale_to_budget=scale_to_budget)


def train_crops(config):
    """The non-empty rows of the first `config.sparse.sizing_crops` training rows, as the train step sees
    them (augmented); the batches are read to the end of a bounded pipeline (`pipeline.TrainIterator`)."""
    from ppt_jax.data import pipeline
    n, b = config.sparse.sizing_crops, config.data.batch_size
    crops = [g[m] for batch in pipeline.train_dataset(config.data, 0, 1, start_step=0, steps=-(-n // b))
             for g, m in zip(batch["grid_coord"], batch["mask"])]
    return [c for c in crops[:n] if len(c)]


def _rows(batches):
    """The non-empty rows of (B, N) batches, as (n, 3) grid coordinates."""
    return [g[m] for b in batches for g, m in zip(b["grid_coord"], b["mask"]) if m.any()]


def eval_crops(config):
    """Every validation row of every `config.eval.datasets` split (capacities must fit them all)."""
    from ppt_jax.data import pipeline
    return [row for name in config.eval.datasets
            for row in _rows(pipeline.eval_dataset(config.eval.val_dirs[name], name, config.data))]


def test_crops(config):
    """Every row of test-time voting (13 views x GridSample fragments of every validation scene): their
    voxelisations differ from the validation rows', so the vote step is sized on them."""
    from ppt_jax.data import pipeline
    return [row for name in config.eval.datasets
            for scene in pipeline.fragment_dataset(config.eval.val_dirs[name], name, config.data)
            for row in _rows(scene["batches"])]


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
        files.write_text(path, json.dumps({k: v.tolist() for k, v in stats.items()}))
    return stats


def log_padding(spec, stats, what):
    """One line per level: capacity, the largest need of the measured crops and the padding it costs (goal
    < 10 %): of the sites (against those crops, so at least what the margin adds; against all the crops a
    run sees: benchmarks/capacity_margin.py), and of the pair products the convs compute over those crops
    (the pair capacity's slack is index memory only)."""
    for r in sparse.sizing.padding_report(spec, stats):
        pairs = ""
        if r["pairs"]:
            pairs = f", {r['pairs']} pairs in whole chunks (largest {r['pairs_needed']}"
            pairs += (")" if r["pair_waste"] is None else
                      f"; chunks of {spec.pair_chunks[r['level']]}: products padded "
                      f"{100 * r['pair_waste']:.0f}% over the measured crops)")
        log.info("%s level %d: %d sites (largest measured crop %d, padding %.0f%%)%s", what, r["level"],
                 r["sites"], r["sites_needed"], 100 * r["site_waste"], pairs)


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


def data_is_synthetic(config):
    """Whether every val split's manifest says it holds synthetic data (labels the results)."""
    dirs = [config.eval.val_dirs[n] for n in config.eval.datasets]
    return all(schema.read_manifest(d).get("synthetic", False) for d in dirs)


def total_steps(config):
    """config.train.steps, or config.train.epochs epochs of the first dataset."""
    from ppt_jax.data import pipeline
    if config.train.steps > 0:
        return int(config.train.steps)
    return int(config.train.epochs * pipeline.steps_per_epoch(config.data))


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


# Settings an export's weights were made for that its arrays' shapes do not show.
EXPORT_SETTINGS = (("model", "s3dis_order"), ("data", "color_norm"))


def export_setting(config, section, name):
    defaults = {"color_norm": data_config.DEFAULT_COLOR_NORM}   # exports older than the field
    return config[section].get(name, defaults.get(name))


def init_from_export(run, variables):
    """(variables overwritten path by path with the export at config.init.export_dir, arrays
    loaded); refuses an export made for other EXPORT_SETTINGS or another model."""
    import ml_collections
    from flax import traverse_util

    from ppt_jax.train import checkpoint

    exported, meta = checkpoint.load_export(run.config.init.export_dir)
    saved_config = ml_collections.ConfigDict(meta["config"])
    differ = [f"config.{sec}.{name}: export {export_setting(saved_config, sec, name)!r}, this run "
              f"{export_setting(run.config, sec, name)!r}" for sec, name in EXPORT_SETTINGS
              if export_setting(saved_config, sec, name) != export_setting(run.config, sec, name)]
    if differ:
        raise ValueError(f"config.init.export_dir {run.config.init.export_dir} was made for other "
                         f"settings ({'; '.join(differ)}): set them to the export's values, e.g. "
                         + " ".join(f"--config.{sec}.{name}={export_setting(saved_config, sec, name)}"
                                    for sec, name in EXPORT_SETTINGS))
    fresh = traverse_util.flatten_dict(variables, sep="/")
    saved = traverse_util.flatten_dict(exported, sep="/")
    unknown = sorted(set(saved) - set(fresh))
    if unknown:
        raise ValueError(f"config.init.export_dir: arrays {unknown[:5]} of the export do not exist "
                         f"in this model (config.model must match the exported one)")
    for path, value in saved.items():
        if np.shape(value) != np.shape(fresh[path]):
            raise ValueError(f"config.init.export_dir: {path} has shape {np.shape(value)} in the "
                             f"export, {np.shape(fresh[path])} in this model")
        fresh[path] = jnp.asarray(value, fresh[path].dtype)
    log.info("Initialised %d of %d arrays from the %s export %s", len(saved), len(fresh),
             meta["part"], run.config.init.export_dir)
    return traverse_util.unflatten_dict(fresh, sep="/"), len(saved)


def _state(variables, tx, seed):
    params = variables["params"]
    return TrainState(step=jnp.int32(0), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed + 1)))


def new_state(variables, tx, seed, mesh):
    """A fresh train state, replicated over the mesh."""
    return jax.device_put(_state(variables, tx, seed), sharding.replicated(mesh))


def abstract_state(run, tx):
    """The train state's shapes and dtypes, replicated: a restore template that reads no data and
    computes nothing (`jax.eval_shape`)."""
    seed = run.config.seed
    shapes = jax.eval_shape(lambda: _state(init_variables(run.model, run.config, seed), tx, seed))
    where = sharding.replicated(run.mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                                  shapes)
