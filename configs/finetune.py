"""Fine-tune a jointly trained PPT model on one dataset (ScanNet by default).

    python -m ppt_jax.main --config=configs/joint.py --mode=export --workdir=runs/joint
    python -m ppt_jax.main --config=configs/finetune.py --config.init.export_dir=runs/joint/export

The model keeps the exported model's conditions (its prompts and per-dataset norms); the data holds
only the fine-tuned dataset, matched to its prompt by name. The model fields must equal the exported
model's (use the same overrides as the joint run).
"""

from configs import base
from ppt_jax import labels
from ppt_jax.train.setup import merge


def get_config(arg=""):
    """`configs/finetune.py:tiny` fine-tunes the tiny model of configs/tiny.py (tests)."""
    c = base.recipe("finetune", datasets=(labels.SCANNET,), ratios=(1,))
    c.model.conditions = (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS)
    c.init.export_dir = "runs/joint/export"
    c.optim.lr = 0.01
    c.synthetic.overrides["train"]["steps"] = 100
    if arg == "tiny":
        from configs import tiny
        merge(c, tiny.TINY)
        c.optim.lr = 0.05
    elif arg:
        raise ValueError(f"configs/finetune.py: unknown argument {arg!r} (only 'tiny')")
    return c
