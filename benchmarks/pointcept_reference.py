"""Pointcept's own PT-v3m1, PPT-v1m1, serialization and Lovasz code, imported on a CPU machine.

For the fixtures (tests/fixtures/make_pointcept_ptv3.py) and the side-by-side benchmark
(benchmarks/ptv3_step.py), in a scratch environment only (never in CI):

    python3 -m venv /tmp/venv-ref --system-site-packages
    /tmp/venv-ref/bin/pip install torch==2.13.0 spconv==2.3.8 timm addict
    POINTCEPT_ROOT=/path/to/Pointcept /tmp/venv-ref/bin/python ...

POINTCEPT_ROOT is a checkout of github.com/Pointcept/Pointcept (the fixtures were recorded at commit
d74c646db6ab). Its modules are imported one by one, without the package `__init__`s (which import every
model and CUDA extension); stand-ins make that possible on a CPU machine: `torch_scatter.segment_csr`
(the one function PT-v3m1 uses) as `torch.segment_reduce`, timm's `DropPath` from `timm/layers/drop.py`
(timm's package `__init__` needs a torchvision built for the same torch), and an empty `HookBase`.
spconv's CPU kernels cannot fuse a bias into an inference-mode conv ("cpu don't support act and bias"):
its convs are called through their training-mode branch, which adds the bias after the same gather-GEMM;
its backward asks CUDA for a stream (given 0), and its CPU kernels are only correct with one torch thread.
"""

import os
import site
import sys
import types

ROOT = os.environ.get("POINTCEPT_ROOT", "")


def _package(name, path):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
    return module


def load():
    """(ptv3 module, serialization package, lovasz module, PPT-v1m1 module) of the reference."""
    import torch

    if not os.path.isdir(os.path.join(ROOT, "pointcept")):
        raise SystemExit(f"POINTCEPT_ROOT={ROOT!r} is not a Pointcept checkout")
    timm_dir = os.path.join(site.getsitepackages()[0], "timm")
    _package("timm", timm_dir)
    _package("timm.layers", os.path.join(timm_dir, "layers"))
    import timm.layers.drop as drop
    sys.modules["timm.layers"].DropPath = drop.DropPath

    from spconv.pytorch import conv as spconv_conv

    def forward(self, input, add_input=None):
        return self._conv_forward(True, input, self.weight, self.bias, add_input, name=self.name,
                                  sparse_unique_name=self._sparse_unique_name,
                                  act_type=self.act_type, act_alpha=self.act_alpha,
                                  act_beta=self.act_beta)

    spconv_conv.SparseConvolution.forward = forward
    import spconv.pytorch.ops as spconv_ops
    spconv_ops.get_current_stream = lambda: 0          # its backward asks CUDA for a stream
    torch.set_num_threads(1)                           # spconv's CPU subm conv races with more threads
    scatter = types.ModuleType("torch_scatter")
    scatter.segment_csr = lambda src, indptr, reduce="sum": torch.segment_reduce(
        src, reduce, lengths=indptr[1:] - indptr[:-1], axis=0)
    sys.modules["torch_scatter"] = scatter
    for name in ("pointcept", "pointcept.models", "pointcept.engines", "pointcept.utils",
                 "pointcept.models.point_prompt_training", "pointcept.models.point_transformer_v3",
                 "pointcept.models.losses"):
        _package(name, os.path.join(ROOT, *name.split(".")))
    hooks = types.ModuleType("pointcept.engines.hooks")
    hooks.HookBase = object
    sys.modules["pointcept.engines.hooks"] = hooks
    import pointcept.models.point_prompt_training.prompt_driven_normalization as pdnorm
    sys.modules["pointcept.models.point_prompt_training"].PDNorm = pdnorm.PDNorm
    import pointcept.models.point_transformer_v3.point_transformer_v3m1_base as ptv3
    import pointcept.models.utils.serialization as serialization
    import pointcept.models.losses.builder as builder
    sys.modules["pointcept.models.losses"].build_criteria = builder.build_criteria
    import pointcept.models.losses.lovasz as lovasz
    import pointcept.models.point_prompt_training.point_prompt_training_v1m1_language_guided as ppt
    return ptv3, serialization, lovasz, ppt


# A small PT-v3m1 (4 stages) with the PPT recipe's norms; patch sizes below every level's site count
# (with enable_flash=False the reference shrinks patches to the smallest sample of the batch).
SMALL = dict(in_channels=6, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2, 2),
             enc_depths=(2, 1, 1, 1), enc_channels=(8, 8, 8, 8), enc_num_head=(2, 2, 2, 2),
             enc_patch_size=(16, 8, 4, 2), dec_depths=(2, 1, 1), dec_channels=(8, 8, 8),
             dec_num_head=(2, 2, 2), dec_patch_size=(16, 8, 4), mlp_ratio=4, qkv_bias=True,
             drop_path=0.0, shuffle_orders=False, enable_flash=False, pdnorm_bn=True, pdnorm_ln=True,
             pdnorm_decouple=True, pdnorm_adaptive=False, pdnorm_affine=True,
             pdnorm_conditions=("ScanNet", "S3DIS", "Structured3D"))


# The reference's PTv3 + PPT backbone (configs/scannet/semseg-pt-v3m1-1-ppt-extreme.py), for its sizes.
RECIPE = dict(SMALL, enc_depths=(3, 3, 3, 6, 3), enc_channels=(48, 96, 192, 384, 512),
              enc_num_head=(3, 6, 12, 24, 32), enc_patch_size=(1024,) * 5, stride=(2, 2, 2, 2),
              dec_depths=(3, 3, 3, 3), dec_channels=(64, 96, 192, 384), dec_num_head=(4, 6, 12, 24),
              dec_patch_size=(1024,) * 4, drop_path=0.3, shuffle_orders=True)
