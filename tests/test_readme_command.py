"""The README's main command, `python -m ppt_jax.main --config=configs/joint.py`, on a checkout without
shards: the embedded synthetic variant of the reference recipe. A file of its own, not one of
tests/test_train_e2e.py's chain: it shares nothing with those runs, and the suite's workers
(`-n 2 --dist loadfile`, pyproject.toml) run it beside that file."""

import os

import pytest

from configs import base, joint
from conftest import records, run_main

pytestmark = pytest.mark.slow


def test_the_readme_command_trains_the_steps_its_flags_say(tmp_path):
    """`--config.train.steps=7`: the synthetic variant (1000 steps by default) trains 7 (fewer generated
    rooms, same model, to save time)."""
    config = ("configs/joint.py" if base.missing_shards(joint.get_config("reference"))
              else "configs/joint.py:synthetic")
    out = run_main(1, tmp_path / "J", "--config.train.steps=7", "--config.synthetic.scenes=(8,4,4)",
                   "--config.synthetic.val_scenes=(1,1,1)", f"--config.text.cache_dir={tmp_path / 'text'}",
                   config=config)
    start = records(tmp_path / "J", "start")[0]
    assert start["total_steps"] == 7 and start["config"]["train"]["steps"] == 7 and start["synthetic"]
    assert start["config"]["model"]["channels"] == [16, 16, 32, 32, 32, 32, 16, 16]
    assert [r["step"] for r in records(tmp_path / "J", "train")] == [7]
    assert records(tmp_path / "J", "final")[0]["step"] == 7
    assert "step 7/7" in out and os.listdir(tmp_path / "J" / "checkpoints") == ["7"]
