"""The reference recipe (SpUNet-v1m3 + PPT, docs/reference.md) as one ConfigDict, and its scaled-down
variants.

Not a runnable config by itself: `joint.py`, the baselines, `tiny.py` and `finetune.py` start from
`recipe()` and change a few fields. Every default has one source: `config.model` holds every field of
`models.PPT` with the model's own default (the reference SpUNet-v1m3 + PPT), `config.data` starts from
`data.default_config()` (the reference's data recipe, documented in ppt_jax/data/config.py), and
the model sizes of the scaled-down variants are `MODEL_SIZES`.

Data: the reference reads shards from `data/shards/<Dataset>/{train,val}` (data_prep writes them).
The `synthetic` variant (`embedded()`) trains on synthetic multi-domain rooms that the entry point
generates into `<workdir>/synthetic` (data dirs left "" are filled with those). A config's
`get_config("")` picks the reference when its shards exist and the synthetic variant otherwise
(`config.synthetic.enabled` says which); flags given on the command line are applied after it, so
they always win.
"""

import dataclasses
import os

import ml_collections

from ppt_jax import labels, models
from ppt_jax.data import config as data_config
from ppt_jax.data import schema
from ppt_jax.sparse import sizing

SHARD_ROOT = "data/shards"   # data_prep writes <root>/<Dataset>/<split>/
VARIANTS = ("", "reference", "synthetic")

# Width/depth presets of the scaled-down runs (the reference is models.PPT's default).
MODEL_SIZES = {
    "tiny": {"channels": (8,) * 8, "layers": (1,) * 8, "base_channels": 8, "context_channels": 8},
    "small": {"channels": (16, 16, 32, 32, 32, 32, 16, 16), "layers": (1,) * 8,
              "base_channels": 16, "context_channels": 32},
    "medium": {"channels": (32, 32, 64, 64, 64, 64, 32, 32), "layers": (1, 2, 2, 2, 1, 1, 1, 1),
               "base_channels": 32, "context_channels": 64},
}
# Model fields set otherwise: the text table is computed at start-up, the dtype is given by name,
# the backbone choice (PPT.arch) is `backbone` and its PTv3 settings (PPT.ptv3, pairs) a ConfigDict.
_MODEL_RUNTIME_FIELDS = ("parent", "name", "text_table", "dtype", "arch", "ptv3")


def model_config(conditions):
    """`config.model`: every hyper-parameter field of `models.PPT` with its default
    (`train.setup.build_model` passes them back)."""
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(models.PPT):
        if field.name in _MODEL_RUNTIME_FIELDS or field.default is dataclasses.MISSING:
            continue
        c[field.name] = field.default
    c.conditions = tuple(conditions)     # prompts / per-dataset BN / head, matched by name
    c.dtype = "float32"                  # "bfloat16": bf16 compute, f32 master weights and loss
    c.backbone = models.PPT.arch         # "spunet" or "ptv3" (configs/joint_ptv3.py)
    c.ptv3 = ml_collections.ConfigDict()  # PTv3 fields (models.ptv3.defaults()) for backbone="ptv3"
    return c


def recipe(name, datasets=(labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS), ratios=(4, 2, 1)):
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0

    c.data = data_config.default_config()
    c.data.datasets = tuple(datasets)
    c.data.ratios = tuple(ratios)
    c.data.train_dirs = {n: f"{SHARD_ROOT}/{n}/train" for n in datasets}

    c.model = model_config(datasets)

    c.sparse = ml_collections.ConfigDict()
    c.sparse.conv_form = "pairs"       # 3x3x3 convs on exact active pairs at the fine levels; "dense": 27 taps
    c.sparse.capacity_margin = sizing.MARGIN  # level sites = largest measured crop x margin (sparse.sizing)
    c.sparse.pair_margin = sizing.PAIR_MARGIN  # level pairs = largest measured crop x this
    c.sparse.sizing_crops = 32         # training crops measured at the first start (kept in the workdir)
    c.sparse.on_overflow = "raise"     # a crop over capacity: "raise", or "skip" its batch (counted, logged)
    c.sparse.search_method = "scan"

    c.text = ml_collections.ConfigDict()
    c.text.encoder = "clip"            # openai/clip-vit-base-patch16 (ppt_jax.text)
    c.text.model_path = ""             # local directory or hub id; "" = the encoder's default
    c.text.bpe_path = ""               # CLIP's bpe_simple_vocab_16e6.txt.gz when the model has no tokenizer
    c.text.template = "[x]"
    c.text.fallback = "minilm"         # used (and said so) when the encoder's weights are absent
    c.text.cache_dir = ""              # "" = <workdir>/text
    c.text.allow_download = False      # True: let transformers fetch model_path from the hub

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.lr = 0.05
    c.optim.weight_decay = 1e-4
    c.optim.nesterov = True
    c.optim.momentum = 0.9
    c.optim.cycle_momentum = True
    c.optim.base_momentum = 0.85
    c.optim.max_momentum = 0.95
    c.optim.pct_start = 0.05
    c.optim.div_factor = 10.0
    c.optim.final_div_factor = 1e4
    c.optim.betas = (0.9, 0.999)
    c.optim.clip_grad = 0.0
    c.optim.group_keywords = models.PROMPT_KEYWORDS
    c.optim.group_lr_scale = 1.0       # ablation: the paper's 0.1x prompt learning rate

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 100               # of the first dataset (the reference's loader length)
    c.train.steps = 0                  # > 0 overrides epochs
    c.train.log_every = 50
    c.train.eval_every = 0             # 0: evaluate at the end only
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.stop_at_step = -1          # stop (after saving) at this step, e.g. to split a run
    c.train.on_nonfinite = "raise"     # or "skip" the batch (the update is never applied)
    c.train.allow_resume_changes = ""  # settings that may differ from the checkpoint's, e.g. "optim.lr"
    c.train.profile_steps = ()         # (first, last): a jax.profiler trace of these steps in <workdir>/profile

    c.eval = ml_collections.ConfigDict()
    c.eval.datasets = tuple(datasets)
    c.eval.val_dirs = {n: f"{SHARD_ROOT}/{n}/val" for n in datasets}

    c.init = ml_collections.ConfigDict()
    c.init.export_dir = ""             # initialise from `--mode export` output (fine-tuning)

    c.export = ml_collections.ConfigDict()
    c.export.part = "full"             # or "backbone"

    c.synthetic = ml_collections.ConfigDict()   # used by embedded() configs only
    c.synthetic.enabled = False
    c.synthetic.reason = ""            # why the synthetic variant was chosen (logged at start-up)
    c.synthetic.scenes = (32, 16, 16)  # Structured3D, ScanNet, S3DIS (data_prep.synthetic order)
    c.synthetic.val_scenes = (8, 10, 10)   # the first 2-4 of each hold every label (synthetic.val_plan)
    c.synthetic.density = 0.3          # of the real 2 cm sites: most 5 cm cells occupied (ScanNet ~60 %)
    c.synthetic.seed = 0
    c.synthetic.workers = 1            # per-split worker pools cost a TensorFlow import each
    return c


def missing_shards(c):
    """The train and val split directories of the config that hold no manifest."""
    dirs = [*dict(c.data.train_dirs).values(), *dict(c.eval.val_dirs).values()]
    return [d or "(unset)" for d in dirs
            if not (d and os.path.exists(os.path.join(d, schema.MANIFEST_NAME)))]


# The synthetic variant (`embedded`, with `config.synthetic` above), chosen from the runs in
# docs/results/README.md ("The embedded default"): 5 cm voxels on rooms at 30 % of the real 2 cm site
# density (objects a few connected cells wide; generation ~50 s), 8192-site crops, batch 2 with
# BatchNorm statistics that follow the weights (momentum 0.9) over a short run, cross-entropy +
# Lovasz and lr 0.05 (0.02 was no better at 600 steps), and as many steps as fit in 10 minutes on
# 2 cores with generation, a cold compile and the evaluation.
EMBEDDED_STEPS = 1000
EMBEDDED = {
    "data": {"grid_size": 0.05, "batch_size": 2, "num_sites": 8192, "eval_num_sites": 81920,
             "eval_num_points": 262144, "test_batch_size": 4, "num_parallel_calls": 2},
    "sparse": {"sizing_crops": 64},
    "model": dict(MODEL_SIZES["small"], bn_momentum=0.9, criteria=("cross_entropy", "lovasz")),
    "optim": {"lr": 0.05},
}


def embedded(c, steps=EMBEDDED_STEPS, reason="the config asked for it"):
    """The synthetic variant: generated multi-domain rooms and the recipe scaled to minutes on a
    2-core CPU (`EMBEDDED`: small model, 5 cm grid, small crops, `steps` steps; README.md records a
    run)."""
    c.synthetic.enabled = True
    c.synthetic.reason = reason
    c.data.train_dirs = {n: "" for n in c.data.datasets}      # "": <workdir>/synthetic/<n>/train
    c.eval.val_dirs = {n: "" for n in c.eval.datasets}
    for section, values in EMBEDDED.items():
        c[section].update(values)
    c.train.update({"steps": steps, "log_every": 50, "checkpoint_every": 200})
    return c


def variant(c, arg, synthetic_steps=EMBEDDED_STEPS):
    """`get_config(arg)` of the recipe configs: "reference" (the shards in data/shards), "synthetic"
    (`embedded`) or "" = the reference when any of its shards exist (a missing one is then an error
    naming it), else the synthetic variant."""
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r}: expected one of {VARIANTS[1:]} or none")
    if arg == "synthetic":
        return embedded(c, synthetic_steps, reason=f"configs/{c.name}.py:synthetic")
    missing = missing_shards(c)
    total = len(c.data.datasets) + len(c.eval.datasets)
    if arg == "" and len(missing) == total:   # some but not all: a wrong path, reported at start-up
        return embedded(c, synthetic_steps, reason=f"configured shards not found: "
                                                   f"{', '.join(missing)}")
    return c
