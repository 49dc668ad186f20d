"""Single-dataset baseline on Structured3D (the same SpUNet-v1m3 and recipe, one dataset, no mixing).

    python -m ppt_jax.main --config=configs/structured3d.py[:synthetic|:reference]

The synthetic variant trains 150 steps (half the joint run's: one domain's share of its data).
"""

from configs import base


def get_config(arg=""):
    return base.variant(base.recipe("structured3d", datasets=("Structured3D",), ratios=(1,)), arg, synthetic_steps=150)
