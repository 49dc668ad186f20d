"""PPT joint training on Structured3D + ScanNet + S3DIS (ratio 4:2:1): the reference recipe.

    python -m ppt_jax.main --config=configs/joint.py
    python -m ppt_jax.main --config=configs/joint.py:synthetic --config.train.steps=1000

Shards are read from data/shards/<Dataset>/{train,val} (override with
--config.data.train_dirs.ScanNet=... and --config.eval.val_dirs.ScanNet=...). When they are absent,
or with `:synthetic`, the same recipe runs on synthetic multi-domain data generated into the work
directory, scaled to minutes on a 2-core CPU (`configs/base.py:embedded`), and prints
per-dataset mIoU at the end. `:reference` insists on the shards.
"""

from configs import base


def get_config(arg=""):
    return base.variant(base.recipe("joint"), arg)
