"""The PTv3 recipe end to end through `python -m ppt_jax.main` (configs/joint_ptv3.py:tiny): the embedded
synthetic default, CE + Lovasz, AdamW with the "block" group; the train step compiles once."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cpu_env

pytestmark = pytest.mark.slow


def test_tiny_ptv3_trains_through_main(tmp_path):
    env = cpu_env(JAX_LOG_COMPILES="1")
    cmd = [sys.executable, "-m", "ppt_jax.main", "--config=configs/joint_ptv3.py:tiny",
           f"--workdir={tmp_path}", "--config.train.steps=3"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert out.stderr.count("Compiling jit(train_step)") == 1, out.stderr[-3000:]
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["last_loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert "PPT per-dataset results after 3 steps" in out.stdout
