"""Single-dataset baseline on ScanNet (the same SpUNet-v1m3 and recipe, one dataset, no mixing).

    python -m ppt_jax.main --config=configs/scannet.py[:synthetic|:reference]

The synthetic variant trains 150 steps (half the joint run's: one domain's share of its data).
"""

from configs import base


def get_config(arg=""):
    return base.variant(base.recipe("scannet", datasets=("ScanNet",), ratios=(1,)), arg, synthetic_steps=150)
