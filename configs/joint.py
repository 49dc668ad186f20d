"""PPT joint training on Structured3D + ScanNet + S3DIS (ratio 4:2:1): the reference recipe.

    python -m ppt_jax.main --config=configs/joint.py

Shards are read from data/shards/<Dataset>/{train,val} (override with
--config.data.train_dirs.ScanNet=... and --config.eval.val_dirs.ScanNet=...). When they are absent,
the same recipe runs on synthetic multi-domain data generated into the work directory, scaled to
about 10 minutes on a 2-core CPU (config.synthetic), and prints per-dataset mIoU at the end.
"""

from configs import base


def get_config():
    return base.recipe("joint")
