"""Fine-tune a jointly trained PPT model on one dataset (ScanNet by default).

    python -m ppt_jax.main --config=configs/joint.py --mode=export --workdir=runs/joint
    python -m ppt_jax.main --config=configs/finetune.py --config.init.export_dir=runs/joint/export

The model keeps the exported model's conditions (its prompts and per-dataset norms); the data holds
only the fine-tuned dataset, matched to its prompt by name. The model fields must equal the exported
model's: `configs/finetune.py:synthetic` fine-tunes the synthetic joint run's small model,
`configs/finetune.py:tiny` the tiny model of configs/tiny.py (tests).
"""

from configs import base, tiny

ARGS = ("", "reference", "synthetic", "tiny")


def get_config(arg=""):
    if arg not in ARGS:
        raise ValueError(f"configs/finetune.py: unknown argument {arg!r} (one of {ARGS[1:]})")
    c = base.recipe("finetune", datasets=("ScanNet",), ratios=(1,))
    c.model.conditions = ("Structured3D", "ScanNet", "S3DIS")
    c.init.export_dir = "runs/joint/export"
    c.optim.lr = 0.01
    if arg == "tiny":
        c = tiny.tiny(base.embedded(c, reason="configs/finetune.py:tiny"))
        c.optim.lr = 0.05
        return c
    return base.variant(c, arg, synthetic_steps=100)
