"""Naive joint training (the paper's negative-transfer baseline): three datasets, no prompts
(one shared BatchNorm, adapter "none"), one unionized linear head over the 36 union names.

    python -m ppt_jax.main --config=configs/naive_joint.py[:synthetic|:reference]
"""

from configs import base


def get_config(arg=""):
    c = base.recipe("naive_joint")
    c.model.adapter = "none"
    c.model.head = "unionized"
    return base.variant(c, arg)
