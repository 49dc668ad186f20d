"""Every config loads, is consistent with the pipeline's checks and documents its command; flags
beat every default; the setup helpers (condition matching by name, hierarchy capacities, the model
built from config.model) behave and fail clearly."""

import glob
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from ppt_jax import labels, main
from ppt_jax.data import config as data_config
from ppt_jax.train import setup
from conftest import REPO

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "base")))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent_and_documents_its_command(name):
    module = importlib.import_module(f"configs.{name}")
    assert f"python -m ppt_jax.main --config=configs/{name}.py" in module.__doc__
    c = main.embedded_data(module.get_config(), "runs/x")[0]
    data_config.check_config(c.data, train=True)
    assert set(c.data.datasets) <= set(c.model.conditions)
    assert set(c.eval.datasets) <= set(c.data.datasets)
    setup.condition_map(c)
    setup.hierarchy_spec(c, c.data.num_sites)
    model = setup.build_model(c, None)          # every config.model field is a models.PPT field
    assert model.channels == tuple(c.model.channels) and model.head == c.model.head


def test_joint_is_the_reference_recipe():
    from configs import joint
    c = joint.get_config("reference")
    assert c.data.datasets == (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS)
    assert c.data.ratios == (4, 2, 1) and c.data.batch_size == 24 and c.data.mix_prob == 0.8
    assert c.data.grid_size == 0.02
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.nesterov) == ("sgd", 0.05, 1e-4,
                                                                                   True)
    assert (c.optim.pct_start, c.optim.div_factor, c.optim.final_div_factor) == (0.05, 10.0, 1e4)
    assert (c.model.adapter, c.model.head, c.model.norm_decouple, c.model.norm_adaptive) == (
        "pdnorm", "language", True, True)
    assert c.model.channels == (32, 64, 128, 256, 256, 128, 96, 96)
    assert c.text.encoder == "clip"


def test_joint_ptv3_is_the_reference_recipe():
    """configs/joint_ptv3.py against Pointcept's semseg-pt-v3m1-*-ppt-extreme (docs/ptv3.md, "The recipe")."""
    from configs import joint_ptv3
    c = joint_ptv3.get_config("reference")
    p = c.model.ptv3
    assert (c.model.backbone, c.model.head, c.model.norm_decouple, c.model.norm_adaptive) == (
        "ptv3", "language", True, False)
    assert (c.model.bn_momentum, c.model.bn_epsilon, p.ln_epsilon) == (0.99, 1e-3, 1e-5)
    assert (p.enc_depths, p.enc_channels, p.enc_heads) == ((3, 3, 3, 6, 3), (48, 96, 192, 384, 512),
                                                           (3, 6, 12, 24, 32))
    assert (p.dec_depths, p.dec_channels, p.dec_heads) == ((3, 3, 3, 3), (64, 96, 192, 384), (4, 6, 12, 24))
    assert p.enc_patch_size == (1024,) * 5 and p.dec_patch_size == (1024,) * 4
    assert p.orders == ("z", "z-trans", "hilbert", "hilbert-trans") and p.shuffle_orders
    assert (p.mlp_ratio, p.drop_path, p.cpe_after_unpool) == (4.0, 0.3, "skip")
    assert c.model.criteria == ("cross_entropy", "lovasz")
    o = c.optim
    assert (o.name, o.lr, o.weight_decay, o.clip_grad) == ("adamw", 0.005, 0.05, 3.0)
    assert (o.pct_start, o.div_factor, o.final_div_factor) == (0.05, 10.0, 1000.0)
    assert (o.group_keywords, o.group_lr_scale) == (("block",), 0.1)
    assert c.data.datasets == (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS) and c.data.ratios == (4, 2, 1)
    assert (c.data.batch_size, c.data.grid_size, c.data.num_sites) == (24, 0.02, 204_800)
    assert dict(c.data.crop_point_max) == {labels.SCANNET: 102_400}
    assert dict(c.data.crop_sample_rate) == {labels.STRUCTURED3D: 0.8, labels.S3DIS: 0.6}


def test_naive_joint_and_ablation_switches():
    from configs import naive_joint
    c = naive_joint.get_config()
    assert (c.model.adapter, c.model.head) == ("none", "unionized")
    for field in ("adapter", "head", "zero_init"):
        assert field in c.model
    assert "group_lr_scale" in c.optim


def _load(argv):
    """The config `python -m ppt_jax.main <argv>` trains with (flags parsed as main parses them)."""
    values, argv = flags.FlagValues(), ["main", *argv]
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return main.embedded_data(values.config, "runs/x")[0]


# One field of every section, each set to a value no variant uses.
OVERRIDES = {"train.steps": 7, "train.log_every": 3, "model.channels": (12, 12, 12, 12, 12, 12, 12, 12),
             "model.base_channels": 12, "data.batch_size": 6, "data.num_sites": 777,
             "data.train_dirs.ScanNet": "/x/train", "eval.val_dirs.ScanNet": "/y/val",
             "sparse.capacity_margin": 1.37, "optim.lr": 0.123,
             "text.encoder": "minilm", "synthetic.scenes": (3, 2, 1), "seed": 5}


@pytest.mark.parametrize("config", ["configs/joint.py", "configs/joint.py:synthetic",
                                    "configs/joint.py:reference", "configs/tiny.py",
                                    "configs/finetune.py:tiny"])
def test_flags_beat_every_default(config):
    c = _load([f"--config={config}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])
    for key, value in OVERRIDES.items():
        got = c
        for part in key.split("."):
            got = got[part]
        assert got == value, (config, key, got)


def test_the_embedded_default_is_the_measured_recipe():
    """configs/base.py:EMBEDDED (docs/results/README.md, "The embedded default") on the reference's shape."""
    from configs import base, joint
    c = _load(["--config=configs/joint.py:synthetic"])
    assert c.train.steps == base.EMBEDDED_STEPS == 1000
    assert (c.synthetic.scenes, c.synthetic.val_scenes, c.synthetic.density) == ((32, 16, 16), (8, 10, 10), 0.3)
    assert (c.data.grid_size, c.data.batch_size, c.data.num_sites) == (0.05, 2, 8192)
    assert (c.data.eval_num_sites, c.data.eval_num_points, c.sparse.sizing_crops) == (81920, 262144, 64)
    assert c.model.channels == base.MODEL_SIZES["small"]["channels"] and c.model.bn_momentum == 0.9
    assert c.model.criteria == ("cross_entropy", "lovasz") and c.optim.lr == 0.05
    reference = joint.get_config("reference")   # the recipe's shape is kept
    for key in ("name", "nesterov", "pct_start", "div_factor", "final_div_factor", "weight_decay"):
        assert c.optim[key] == reference.optim[key]
    assert (c.data.ratios, c.data.mix_prob, c.data.mixing) == (reference.data.ratios, reference.data.mix_prob,
                                                               reference.data.mixing)


def test_embedded_default_fills_only_empty_data_dirs():
    c = _load(["--config=configs/joint.py:synthetic", "--config.data.train_dirs.ScanNet=/x/train"])
    assert c.synthetic.enabled and "joint.py:synthetic" in c.synthetic.reason
    assert c.data.train_dirs.ScanNet == "/x/train"
    assert c.data.train_dirs.S3DIS == os.path.join("runs/x", "synthetic", "S3DIS", "train")
    assert c.eval.val_dirs.Structured3D == os.path.join("runs/x", "synthetic", "Structured3D", "val")
    reference = _load(["--config=configs/joint.py:reference"])
    assert not reference.synthetic.enabled
    assert reference.data.train_dirs.ScanNet == "data/shards/ScanNet/train"
    with pytest.raises(Exception, match="config argument 'bogus'"):
        _load(["--config=configs/joint.py:bogus"])


def test_condition_map_matches_by_name():
    from configs import finetune
    f = finetune.get_config()
    assert setup.condition_map(f).tolist() == [1]        # ScanNet is the export's condition 1
    f.data.datasets = ("S3DIS", "ScanNet")
    f.model.conditions = ("ScanNet",)
    with pytest.raises(ValueError, match="not in config.model.conditions"):
        setup.condition_map(f)


def test_hierarchy_capacities_come_from_measured_crops(tmp_path):
    """Capacities = largest measured crop x margin (level 0: the budget), pair lists at the fine levels,
    measured once per work directory (a second call reads the file, never the crops)."""
    from configs import joint
    c = joint.get_config("reference")
    rng = np.random.default_rng(0)
    crops = [np.unique(rng.integers(0, 40, (n, 3)), axis=0) for n in (700, 900)]
    stats = setup.level_stats(tmp_path, "train", lambda: crops)
    assert setup.level_stats(tmp_path, "train", lambda: 1 / 0)["sites"].tolist() == stats["sites"].tolist()
    spec = setup.hierarchy_spec(c, 1000, stats)
    most = stats["sites"].max(axis=0)
    assert spec.capacities[0] == 1000
    for level in range(1, 5):
        want = most[level] * 1000 / most[0] * c.sparse.capacity_margin
        assert min(want, 1000) <= spec.capacities[level] <= min(want + 64, 1000)
    assert all(p > 0 for p in spec.pair_capacities)
    c.sparse.conv_form = "dense"
    assert setup.hierarchy_spec(c, 1000, stats).pair_capacities == (0,) * 5


def test_model_config_is_every_ppt_field_with_its_default():
    import dataclasses

    from configs import base
    from ppt_jax import models
    c = base.recipe("x")
    defaults = {f.name: f.default for f in dataclasses.fields(models.PPT)}
    for key, value in c.model.items():
        if key not in ("conditions", "dtype", "backbone", "ptv3"):
            assert value == defaults[key], key
    assert c.model.backbone == defaults["arch"] and not c.model.ptv3
    c.model.bogus = 1
    with pytest.raises(ValueError, match="config.model.bogus is not a field of models.PPT"):
        setup.build_model(c, None)


def test_configs_and_the_model_side_load_without_tensorflow():
    """TensorFlow (0.5 GiB) loads only with the tf.data pipeline: reading a config, the shard schema,
    the model, the sparse engine or the train step does not import it."""
    probe = ("import sys; import configs.joint, configs.joint_ptv3, ppt_jax.data.schema, ppt_jax.models, "
             "ppt_jax.train.setup, ppt_jax.train.step; configs.joint.get_config(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_main_without_config_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "ppt_jax.main"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "--config is required" in out.stderr


def test_a_typo_in_one_shard_path_is_an_error_not_synthetic_data(tmp_path):
    from configs import joint

    config = joint.get_config("reference")
    for name in labels.DATASETS:
        for field, split in ((config.data.train_dirs, "train"), (config.eval.val_dirs, "val")):
            split_dir = tmp_path / "shards" / name / split
            split_dir.mkdir(parents=True)
            (split_dir / "manifest.json").write_text("{}")
            field[name] = str(split_dir)
    config.data.train_dirs["ScanNet"] = str(tmp_path / "shards" / "ScanNt" / "train")
    assert main.embedded_data(config, str(tmp_path / "work"))[1] is None    # nothing to generate
    with pytest.raises(FileNotFoundError) as err:
        setup.check_splits(config, ("train", "val"))
    assert str(err.value).startswith(f"config.data.train_dirs.ScanNet = "
                                     f"'{tmp_path}/shards/ScanNt/train': no shard manifest there")
    assert not (tmp_path / "work" / "synthetic").exists()
    setup.check_splits(config, ("val",))                 # evaluation reads no train split
    # The auto variant with some shards present is the reference (the missing one then fails),
    # never the synthetic data.
    from configs import base
    c = base.recipe("joint")
    c.data.train_dirs, c.eval.val_dirs = config.data.train_dirs, config.eval.val_dirs
    assert not base.variant(c, "").synthetic.enabled


def test_the_synthetic_default_refuses_an_object_storage_workdir(ram_dir):
    from configs import tiny

    with pytest.raises(ValueError, match=f"--workdir {ram_dir}/w: the embedded synthetic default is "
                                         f"written with the local file system"):
        main.embedded_data(tiny.get_config(), f"{ram_dir}/w")
    assert not os.path.exists("ram:")
