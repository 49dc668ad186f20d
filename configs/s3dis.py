"""Single-dataset baseline on S3DIS (the same SpUNet-v1m3 and recipe, one dataset, no mixing).

    python -m ppt_jax.main --config=configs/s3dis.py
"""

from configs import base


def get_config():
    c = base.recipe("s3dis", datasets=("S3DIS",), ratios=(1,))
    c.synthetic.overrides["train"]["steps"] = 150
    return c
