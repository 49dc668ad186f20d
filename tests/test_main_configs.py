"""Every config loads, is consistent with the pipeline's checks and documents its command; the setup
helpers (override merge, condition matching by name, hierarchy capacities) behave and fail clearly."""

import glob
import importlib
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ppt_jax import data, labels
from ppt_jax.train import setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "base")))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent_and_documents_its_command(name):
    module = importlib.import_module(f"configs.{name}")
    assert f"python -m ppt_jax.main --config=configs/{name}.py" in module.__doc__
    c = module.get_config()
    data.check_config(c.data, train=True)
    assert set(c.data.datasets) <= set(c.model.conditions)
    assert set(c.eval.datasets) <= set(c.data.datasets)
    setup.condition_map(c)
    setup.hierarchy_spec(c, c.data.num_sites)


def test_joint_is_the_reference_recipe():
    from configs import joint
    c = joint.get_config()
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


def test_naive_joint_and_ablation_switches():
    from configs import naive_joint
    c = naive_joint.get_config()
    assert (c.model.adapter, c.model.head) == ("none", "unionized")
    for field in ("adapter", "head", "zero_init"):
        assert field in c.model
    assert "group_lr_scale" in c.optim


def test_merge_is_recursive_and_condition_map_matches_by_name():
    c = ml_collections.ConfigDict({"a": {"b": 1, "c": 2}, "d": 3})
    setup.merge(c, {"a": {"b": 5}})
    assert c.to_dict() == {"a": {"b": 5, "c": 2}, "d": 3}
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
    c = joint.get_config()
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
    assert [p > 0 for p in spec.pair_capacities] == [True, True, True, False, False]
    c.sparse.conv_form = "dense"
    assert setup.hierarchy_spec(c, 1000, stats).pair_capacities == (0,) * 5


def test_main_without_config_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "ppt_jax.main"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "--config is required" in out.stderr


def test_a_typo_in_one_shard_path_is_an_error_not_synthetic_data(tmp_path):
    from configs import tiny

    config = tiny.get_config()
    for name in labels.DATASETS:
        for field, split in ((config.data.train_dirs, "train"), (config.eval.val_dirs, "val")):
            split_dir = tmp_path / "shards" / name / split
            split_dir.mkdir(parents=True)
            (split_dir / "manifest.json").write_text("{}")
            field[name] = str(split_dir)
    config.data.train_dirs["ScanNet"] = str(tmp_path / "shards" / "ScanNt" / "train")
    with pytest.raises(FileNotFoundError) as err:
        setup.resolve_data(config, str(tmp_path / "work"))
    assert str(err.value).startswith(f"config.data.train_dirs.ScanNet = "
                                     f"'{tmp_path}/shards/ScanNt/train': no shard manifest there")
    assert not (tmp_path / "work" / "synthetic").exists()


def test_the_synthetic_default_refuses_an_object_storage_workdir(ram_dir):
    from configs import tiny

    with pytest.raises(ValueError, match=f"--workdir {ram_dir}/w: the embedded synthetic default is "
                                         f"written with the local file system"):
        setup.resolve_data(tiny.get_config(), f"{ram_dir}/w")
    assert not os.path.exists("ram:")
