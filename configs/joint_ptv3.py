"""PPT with a Point Transformer V3 backbone on Structured3D + ScanNet + S3DIS (4:2:1): the reference's
PTv3 + PPT recipe (Pointcept's `semseg-pt-v3m1-1-ppt-extreme` backbone and clipping, with the data mix
and crops of `semseg-pt-v3m1-2-ppt-extreme`, its three-dataset config: docs/ptv3.md, "The recipe").

    python -m ppt_jax.main --config=configs/joint_ptv3.py [--config.model.ptv3.enc_patch_size=...]
    python -m ppt_jax.main --config=configs/joint_ptv3.py:tiny      # a seconds-scale smoke run

Differences from the SpUNet recipe (configs/joint.py): backbone PT-v3m1 with dataset-specific BN and LN
(no prompt modulation), CrossEntropy + Lovasz-softmax, AdamW (lr 0.005, weight decay 0.05) with 0.1x
learning rate on every parameter whose name holds "block" (the reference's param_dicts), OneCycle to
lr / 1000, gradient clipping at 3.0 (the ScanNet variant's setting), spheres of at most 204800 sites
(ScanNet 102400; Structured3D 80 % and S3DIS 60 % of the scene first). Arguments as configs/joint.py
(`:reference`, `:synthetic`, none = the reference when its shards exist), plus `:tiny`; the synthetic
variants scale the PTv3 down as well.
"""

from configs import base, tiny
from ppt_jax import labels
from ppt_jax.models import ptv3

SYNTHETIC_PTV3 = {
    "enc_depths": (1, 1, 1, 1, 1), "enc_channels": (16, 16, 32, 32, 32), "enc_heads": (2, 2, 4, 4, 4),
    "enc_patch_size": (128,) * 5, "dec_depths": (1, 1, 1, 1), "dec_channels": (16, 16, 32, 32),
    "dec_heads": (2, 2, 4, 4), "dec_patch_size": (128,) * 4, "drop_path": 0.1,
}
TINY_PTV3 = dict(SYNTHETIC_PTV3, enc_channels=(8,) * 5, enc_heads=(2,) * 5, dec_channels=(8,) * 4,
                 dec_heads=(2,) * 4, enc_patch_size=(64,) * 5, dec_patch_size=(64,) * 4,
                 orders=("z", "hilbert"))


def apply_recipe(c):
    """The PTv3 + PPT model, loss, optimizer and crops on a recipe config (here and configs/finetune.py)."""
    m = c.model
    m.backbone = "ptv3"
    m.ptv3 = ptv3.defaults()
    m.norm_adaptive = False
    m.criteria = ("cross_entropy", "lovasz")

    o = c.optim
    o.name, o.lr, o.weight_decay, o.final_div_factor, o.clip_grad = "adamw", 0.005, 0.05, 1000.0, 3.0
    o.group_keywords, o.group_lr_scale = ("block",), 0.1

    c.data.num_sites = 204_800
    c.data.crop_point_max = {labels.SCANNET: 102_400}
    c.data.crop_sample_rate = {labels.STRUCTURED3D: 0.8, labels.S3DIS: 0.6}
    return c


def get_config(arg=""):
    c = apply_recipe(base.recipe("joint_ptv3"))
    if arg == "tiny":
        c = tiny.tiny(base.embedded(c.copy_and_resolve_references(), reason="configs/joint_ptv3.py:tiny"), c)
        c.model.ptv3.update(TINY_PTV3)
        c.name = "joint_ptv3_tiny"
        c.synthetic.update({"scenes": (4, 2, 2), "val_scenes": (1, 1, 1)})
        return c
    c = base.variant(c, arg)
    if c.synthetic.enabled:                 # (the SpUNet fields it shrinks are not read by PTv3)
        c.model.ptv3.update(SYNTHETIC_PTV3)
    return c
