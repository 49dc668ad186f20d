"""A minutes-scale smoke run of the joint recipe (tests and CI): tiny model, tiny synthetic data.

    python -m ppt_jax.main --config=configs/tiny.py --workdir=/tmp/ppt_tiny

Always the synthetic variant (data dirs given on the command line are used as given); the tiny
sizes are `tiny()`, which `configs/finetune.py:tiny` reuses.
"""

from configs import base


SMOKE_SYNTHETIC = {"scenes": (32, 16, 8), "val_scenes": (4, 4, 4), "density": 0.02}
"""The smoke runs' generated rooms: few and sparse (the embedded default's are many and dense)."""


def tiny(c, plain):
    """The tiny model and static shapes (applied to any recipe config `c` made by `base.embedded`), with
    the grid, sizing, loss and learning rate of `plain` (the recipe before `base.embedded`), not the
    embedded default's tuned ones (base.EMBEDDED: 5 cm rooms at density 0.3, Lovasz): those make every
    smoke run slower and test no more of the plumbing."""
    c.data.grid_size = plain.data.grid_size
    c.sparse.sizing_crops = plain.sparse.sizing_crops
    c.model.update({"bn_momentum": plain.model.bn_momentum, "criteria": plain.model.criteria})
    c.optim.lr = plain.optim.lr
    c.synthetic.update(SMOKE_SYNTHETIC)
    c.model.update(base.MODEL_SIZES["tiny"])
    c.data.update({"batch_size": 2, "num_sites": 1024, "eval_batch_size": 2, "eval_num_sites": 8192,
                   "eval_num_points": 16384, "test_batch_size": 2, "num_parallel_calls": 1})
    c.train.update({"steps": 21, "log_every": 1, "checkpoint_every": 7})
    return c


def get_config():
    c = tiny(base.embedded(base.recipe("tiny"), reason="configs/tiny.py"), base.recipe("tiny"))
    c.synthetic.update({"scenes": (8, 4, 4), "val_scenes": (2, 2, 2)})
    return c
