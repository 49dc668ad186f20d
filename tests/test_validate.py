"""Config validation: every choice and range, one line each, before any work."""

import pytest

from configs import base, tiny
from ppt_jax.train import validate



def test_the_shipped_configs_are_valid():
    assert validate.problems(tiny.get_config()) == []
    assert validate.problems(base.recipe("x")) == []


@pytest.mark.parametrize("field, value, line", [
    ("model.head", "linear", "config.model.head: must be one of ('language', 'decoupled', "
                             "'unionized'), got 'linear'"),
    ("model.adapter", "film", "config.model.adapter: must be one of"),
    ("model.dtype", "float16", "config.model.dtype: must be one of ('float32', 'bfloat16')"),
    ("model.channels", (8, 8), "config.model.channels: needs 8 positive integers"),
    ("data.batch_size", 0, "config.data.batch_size: must be >= 1, got 0"),
    ("train.on_nonfinite", "ignore", "config.train.on_nonfinite: must be one of ('raise', 'skip'), "
                                     "got 'ignore'"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints: must be >= 1, got 0"),
    ("train.log_every", 0, "config.train.log_every: must be >= 1, got 0"),
    ("optim.lr", 0.0, "config.optim.lr: must be > 0, got 0.0"),
    ("optim.name", "lamb", "config.optim.name: must be one of ('sgd', 'adamw'), got 'lamb'"),
    ("text.encoder", "bert", "config.text.encoder: must be one of"),
    ("text.template", "a photo", "config.text.template: must contain '[x]'"),
    ("sparse.search_method", "hash", "config.sparse.search_method: must be one of"),
    ("sparse.conv_form", "sparse", "config.sparse.conv_form: must be one of ('dense', 'pairs')"),
    ("sparse.capacity_margin", 0.5, "config.sparse.capacity_margin: must be >= 1"),
    ("sparse.pair_margin", 0.9, "config.sparse.pair_margin: must be >= 1"),
    ("export.part", "head", "config.export.part: must be one of ('full', 'backbone')"),
    ("eval.datasets", ("ScanNet", "KITTI"), "config.eval.datasets: ['KITTI'] are not in"),
])
def test_each_bad_setting_gives_one_line_naming_it(field, value, line):
    config = tiny.get_config()
    section, key = field.split(".")
    with config.unlocked():
        config[section][key] = value
    found = validate.problems(config)
    assert len(found) == 1 and found[0].startswith(line), found
    with pytest.raises(validate.ConfigError, match=line.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        validate.check(config)


def test_several_bad_settings_are_all_reported():
    config = tiny.get_config()
    config.model.head, config.train.keep_checkpoints = "linear", 0
    assert [p.split(":")[0] for p in validate.problems(config)] == [
        "config.model.head", "config.train.keep_checkpoints"]
