"""Single-dataset baseline on ScanNet (the same SpUNet-v1m3 and recipe, one dataset, no mixing).

    python -m ppt_jax.main --config=configs/scannet.py
"""

from configs import base


def get_config():
    c = base.recipe("scannet", datasets=("ScanNet",), ratios=(1,))
    c.synthetic.overrides["train"]["steps"] = 150
    return c
