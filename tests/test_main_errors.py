"""`python -m ppt_jax.main` with bad settings: `error:` lines, exit code 2, no traceback, no work."""

import subprocess
import sys

import pytest
import tensorflow as tf

from ppt_jax import main
from ppt_jax.train import checkpoint, lock, validate
from conftest import REPO, cpu_env


def _main(tmp_path, *flags):
    out = subprocess.run([sys.executable, "-m", "ppt_jax.main", "--config=configs/tiny.py",
                          f"--workdir={tmp_path / 'w'}", *flags], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=cpu_env())
    return out.returncode, out.stderr


def test_an_unknown_override_is_one_line(tmp_path):
    rc, err = _main(tmp_path, "--config.train.stepz=5")
    assert rc == 2 and "Traceback" not in err
    assert ('error: --config.train.stepz: no setting \'stepz\'. Did you mean "steps" instead of '
            '"stepz"?') in err.splitlines()


def test_bad_settings_stop_before_any_work(tmp_path):
    rc, err = _main(tmp_path, "--config.model.head=linear", "--config.train.keep_checkpoints=0",
                    "--config.train.on_nonfinite=ignore")
    assert rc == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert sorted(x.split(":")[1].strip() for x in lines) == [
        "config.model.head", "config.train.keep_checkpoints", "config.train.on_nonfinite"]
    assert not (tmp_path / "w").exists()        # no synthetic data, no text table


@pytest.mark.parametrize("err, lines", [
    (validate.ConfigError("config.a: x\nconfig.b: y"), ["config.a: x", "config.b: y"]),
    (checkpoint.CheckpointError("checkpoint /w/checkpoints/7 does not fit"),
     ["checkpoint /w/checkpoints/7 does not fit"]),
    (lock.WorkdirBusy("/w is in use by another training run: process 12"),
     ["/w is in use by another training run: process 12"]),
    (tf.errors.InvalidArgumentError(None, None, "ValueError: /s/shard-0.tfrecord: record 1 at byte 9 "
                                                "fails its check\nTraceback (most recent call last):\n"
                                                "  File x\n\t [[{{node PyFunc}}]]"),
     ["/s/shard-0.tfrecord: record 1 at byte 9 fails its check"]),
    (KeyError("a bug"), None),
])
def test_user_errors_become_lines_and_bugs_keep_their_traceback(err, lines):
    assert main.user_error_lines(err) == lines
