"""A minutes-scale smoke run of the joint recipe (tests and CI): tiny model, tiny synthetic data.

    python -m ppt_jax.main --config=configs/tiny.py --workdir=/tmp/ppt_tiny

`TINY` is applied directly (not only to the synthetic fallback), so the same tiny model also runs
on given shards; `configs/finetune.py:tiny` reuses it.
"""

from configs import base
from ppt_jax.train.setup import merge

TINY = {
    "model": {"channels": (8,) * 8, "layers": (1,) * 8, "base_channels": 8, "context_channels": 8},
    "data": {"batch_size": 2, "num_sites": 1024, "eval_batch_size": 2, "eval_num_sites": 8192,
             "eval_num_points": 16384, "test_batch_size": 2, "num_parallel_calls": 1},
    "train": {"steps": 21, "log_every": 1, "checkpoint_every": 7},
}


def get_config():
    c = base.recipe("tiny")
    merge(c, TINY)
    s = c.synthetic
    s.scenes, s.val_scenes, s.density, s.workers = (8, 4, 4), (2, 2, 2), 0.02, 1
    s.overrides = {}
    return c
