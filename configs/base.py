"""The reference's SpUNet + PPT recipe (spec §6-§8) as one ml_collections ConfigDict.

Not a runnable config by itself: `joint.py` and the baselines start from `recipe()` and change a few
fields. Sections: data (ppt_jax/data/pipeline.py documents its fields), model, sparse, text, optim,
train, eval, init, export, synthetic (the embedded default, used when the shards are absent).
"""

import ml_collections

from ppt_jax import labels
from ppt_jax.data import pipeline
from ppt_jax.sparse import sizing

SHARD_ROOT = "data/shards"   # data_prep writes <root>/<Dataset>/<split>/


def recipe(name, datasets=(labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS), ratios=(4, 2, 1)):
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0

    c.data = pipeline.default_config()
    c.data.datasets = tuple(datasets)
    c.data.ratios = tuple(ratios)
    c.data.train_dirs = {n: f"{SHARD_ROOT}/{n}/train" for n in datasets}
    c.data.batch_size = 24          # global (all hosts), as the reference's 24 over 8 GPUs
    c.data.crop_point_max = {n: v for n, v in c.data.crop_point_max.items() if n in datasets}
    c.data.crop_sample_rate = {n: v for n, v in c.data.crop_sample_rate.items() if n in datasets}
    c.data.eval_batch_size = 1
    c.data.test_batch_size = 8

    c.model = ml_collections.ConfigDict()
    c.model.conditions = tuple(datasets)       # prompts / per-dataset BN / head, matched by name
    c.model.backbone = "spunet"        # or "ptv3" (configs/joint_ptv3.py); the SpUNet fields follow
    c.model.channels = (32, 64, 128, 256, 256, 128, 96, 96)
    c.model.layers = (2, 3, 4, 6, 2, 2, 2, 2)
    c.model.base_channels = 32
    c.model.context_channels = 256
    c.model.adapter = "pdnorm"         # ablation: "none" | "add" | "cross_attention" | "pdnorm"
    c.model.norm_decouple = True
    c.model.norm_adaptive = True
    c.model.zero_init = False          # the paper's zero-init of the modulation (reference: False)
    c.model.bn_group_size = 0          # 0: BN statistics over the whole global batch
    c.model.head = "language"          # ablation: "decoupled" | "unionized" | "language"
    c.model.s3dis_order = "intended"   # or "code_faithful" (labels.valid_index)
    c.model.dtype = "float32"          # "bfloat16": bf16 compute, f32 master weights and loss
    c.model.criteria = ("cross_entropy",)   # summed; "lovasz" adds the Lovasz-softmax loss
    c.model.ptv3 = ml_collections.ConfigDict()   # PTv3 fields (ppt_jax.models.ptv3.defaults()) for backbone="ptv3"

    c.sparse = ml_collections.ConfigDict()
    c.sparse.conv_form = "pairs"       # 3x3x3 convs on exact active pairs at the fine levels; "dense": 27 taps
    c.sparse.capacity_margin = sizing.MARGIN  # level capacities = largest measured crop x margin (sparse.sizing)
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
    c.optim.group_keywords = ("prompt", "modulation")
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

    c.eval = ml_collections.ConfigDict()
    c.eval.datasets = tuple(datasets)
    c.eval.val_dirs = {n: f"{SHARD_ROOT}/{n}/val" for n in datasets}

    c.init = ml_collections.ConfigDict()
    c.init.export_dir = ""             # initialise from `--mode export` output (fine-tuning)

    c.export = ml_collections.ConfigDict()
    c.export.part = "full"             # or "backbone"

    c.synthetic = synthetic_default(datasets)
    return c


def synthetic_default(datasets):
    """The embedded default: synthetic shards + a recipe scaled to ~10 minutes on a 2-core CPU."""
    s = ml_collections.ConfigDict()
    s.enabled = True
    s.scenes = (32, 16, 8)             # Structured3D, ScanNet, S3DIS (data_prep.synthetic order)
    s.val_scenes = (4, 4, 4)
    s.density = 0.02
    s.seed = 0
    s.workers = 1                      # per-split worker pools cost a TensorFlow import each; 1 is fastest here
    s.overrides = {
        "model": {"channels": (16, 16, 32, 32, 32, 32, 16, 16), "layers": (1, 1, 1, 1, 1, 1, 1, 1),
                  "base_channels": 16, "context_channels": 32},
        "data": {"batch_size": 4, "num_sites": 4096, "eval_num_sites": 16384,
                 "eval_num_points": 32768, "test_batch_size": 4, "num_parallel_calls": 2},
        "train": {"steps": 300, "log_every": 25, "checkpoint_every": 100},
    }
    return s
