"""Single-dataset baseline on Structured3D (the same SpUNet-v1m3 and recipe, one dataset, no mixing).

    python -m ppt_jax.main --config=configs/structured3d.py
"""

from configs import base


def get_config():
    c = base.recipe("structured3d", datasets=("Structured3D",), ratios=(1,))
    c.synthetic.overrides["train"]["steps"] = 150
    return c
