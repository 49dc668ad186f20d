"""Fine-tune a jointly trained PPT model on one dataset (ScanNet by default).

    python -m ppt_jax.main --config=configs/joint.py --mode=export --workdir=runs/joint
    python -m ppt_jax.main --config=configs/finetune.py --config.init.export_dir=runs/joint/export

The model keeps the exported model's conditions (its prompts and per-dataset norms); the data holds
only the fine-tuned dataset, matched to its prompt by name. The model fields must equal the exported
model's: `configs/finetune.py:synthetic` fine-tunes the synthetic joint run's small model,
`configs/finetune.py:tiny` the tiny model of configs/tiny.py (tests).

    python -m ppt_jax.main --config=configs/finetune.py:ptv3 --config.init.export_dir=runs/joint_ptv3/export

`ptv3` (alone or before another argument: `ptv3,synthetic`, `ptv3,tiny`) fine-tunes a PTv3 export with
the PTv3 recipe's model, loss and optimizer (configs/joint_ptv3.py).
"""

from configs import base, joint_ptv3, tiny

ARGS = ("", "reference", "synthetic", "tiny")


def get_config(arg=""):
    first, _, rest = arg.partition(",")
    backbone, variant = ("ptv3", rest) if first == "ptv3" else ("", arg)
    if variant not in ARGS:
        raise ValueError(f"configs/finetune.py: unknown argument {arg!r} (one of {ARGS[1:]}, optionally "
                         f"after 'ptv3,')")
    c = base.recipe("finetune", datasets=("ScanNet",), ratios=(1,))
    c.model.conditions = ("Structured3D", "ScanNet", "S3DIS")
    c.init.export_dir = "runs/joint/export"
    c.optim.lr = 0.01
    if backbone:
        c = joint_ptv3.apply_recipe(c)
        c.init.export_dir = "runs/joint_ptv3/export"
    if variant == "tiny":
        c = tiny.tiny(base.embedded(c.copy_and_resolve_references(), reason=f"configs/finetune.py:{arg}"), c)
        if backbone:
            c.model.ptv3.update(joint_ptv3.TINY_PTV3)
        else:
            c.optim.lr = 0.05
        return c
    c = base.variant(c, variant, synthetic_steps=100)
    if backbone and c.synthetic.enabled:
        c.model.ptv3.update(joint_ptv3.SYNTHETIC_PTV3)
    return c
