"""Import Pointcept PT-v3m1 / PPT-v1m1(PT-v3m1) weights into `PPT(arch="ptv3")` variables.

The state dict is read as for SpUNet (`pointcept_import.load_state_dict`: .npz or .pth, DDP prefix
stripped, a bare backbone state dict treated as `backbone.*`). Every target leaf of the template is
filled from named source keys, each key used at most once, shapes checked, unused keys reported:
- spconv weights (out, kx, ky, kz, in) -> (k**3, in, out) taps; Linear (out, in) -> (in, out);
- PDNorm `<module>.norm.<i>.{weight,bias,running_mean,running_var}` (BatchNorm or LayerNorm, one per
  dataset) stacked into our (D, C) leaves, i = the dataset's index in the reference BACKBONE order
  ("ScanNet", "S3DIS", "Structured3D"); a plain norm (pdnorm_bn/ln off) `<module>.{weight,...}` fills a
  shared (1, C) leaf;
- `embedding_table.weight` rows, `proj_head`, `seg_heads.<i>` in the reference PPT order
  ("Structured3D", "ScanNet", "S3DIS"); both orders are looked up by dataset name.

Our module -> reference key prefix (module names of `ptv3.py`):
  embedding_conv / embedding_norm      embedding.stem.conv / embedding.stem.norm
  enc{s}_down/proj, /norm              enc.enc{s}.down.proj, enc.enc{s}.down.norm.0
  dec{s}_up/proj, proj_norm            dec.dec{s}.up.proj.0, dec.dec{s}.up.proj.1
  dec{s}_up/proj_skip, proj_skip_norm  dec.dec{s}.up.proj_skip.0, dec.dec{s}.up.proj_skip.1
  {enc,dec}{s}_blocks/cpe_conv, cpe_linear, cpe_norm   ....block{i}.cpe.0, cpe.1, cpe.2
  .../norm1, attn/qkv, attn/proj, norm2, mlp_fc1, mlp_fc2  norm1.0, attn.qkv, attn.proj, norm2.0,
                                                           mlp.0.fc1, mlp.0.fc2
A stage's blocks are one scanned module (`ptv3.Block`): row i of each of its leaves is block{i}'s tensor.
"""

import re

import numpy as np

from ppt_jax.models.pointcept_import import (LEAVES, REF_BACKBONE_CONDITIONS, REF_PPT_CONDITIONS, StateSource,
                                             block_count, check_stem, fill_variables, norm_rows,
                                             normalize_keys, ppt_fields, required_shape,
                                             spconv_to_taps, wrapper_leaf)

_NORMS = {"embedding_norm", "norm", "proj_norm", "proj_skip_norm", "cpe_norm", "norm1", "norm2"}
_BLOCK = {"cpe_conv": "cpe.0", "cpe_linear": "cpe.1", "cpe_norm": "cpe.2", "norm1": "norm1.0",
          "qkv": "attn.qkv", "proj": "attn.proj", "norm2": "norm2.0", "mlp_fc1": "mlp.0.fc1",
          "mlp_fc2": "mlp.0.fc2"}
_UP = {"proj": "proj.0", "proj_norm": "proj.1", "proj_skip": "proj_skip.0", "proj_skip_norm": "proj_skip.1"}


def backbone_prefix(mods):
    """Our backbone module path (below `backbone`) -> the reference's dotted module prefix."""
    head, *rest = mods
    if head == "embedding_conv":
        return "backbone.embedding.stem.conv"
    if head == "embedding_norm":
        return "backbone.embedding.stem.norm"
    m = re.fullmatch(r"(enc|dec)(\d+)_(down|up|block\d+)", head)
    if not m or len(rest) != (2 if rest[:1] == ["attn"] else 1):
        raise KeyError(f"no reference module for backbone/{'/'.join(mods)}")
    stage = f"backbone.{m[1]}.{m[1]}{m[2]}.{m[3]}"
    name = rest[-1]
    if m[3] == "down":
        return f"{stage}.{'norm.0' if name == 'norm' else name}"
    if m[3] == "up":
        return f"{stage}.{_UP[name]}"
    return f"{stage}.{_BLOCK[name]}"


def _convert_leaf(src, path, shape, conditions, backbone_conditions, ppt_conditions):
    value = wrapper_leaf(src, path, conditions, ppt_conditions)
    if value is not None:
        return value
    target = "/".join(path)
    *mods, leaf = path
    stacked = re.fullmatch(r"(enc|dec)\d+_blocks", mods[1]) if mods[:1] == ["backbone"] else None
    if stacked:                                       # block{i} of the stage -> row i
        return np.stack([_convert_leaf(src, ("backbone", f"{mods[1][:-1]}{i}", *path[2:]), shape[1:], conditions,
                                       backbone_conditions, ppt_conditions) for i in range(shape[0])])
    if mods[:1] != ["backbone"]:
        raise KeyError(f"no reference key for {target}")
    prefix = backbone_prefix(mods[1:])
    if mods[-1] in _NORMS:
        return norm_rows(src, prefix, f"{prefix}.norm", leaf, shape[0], conditions, backbone_conditions, target)
    w = src.take(f"{prefix}.{LEAVES[leaf]}", target)
    if w.ndim == 5:
        return spconv_to_taps(w)
    return w.T if leaf == "kernel" else w


def convert(state, template, conditions, backbone_conditions=REF_BACKBONE_CONDITIONS,
            ppt_conditions=REF_PPT_CONDITIONS, strict=True):
    """Pointcept state dict -> (variables like `template`, ImportReport), as `pointcept_import.convert`.

    template: {"params", "batch_stats"} of arrays or ShapeDtypeStructs (jax.eval_shape of `PPT.init`
    with arch="ptv3"); conditions: the model's dataset order. strict=False keeps template leaves
    outside the backbone whose source is absent (e.g. the head of a backbone-only state dict).
    """
    return fill_variables(StateSource(normalize_keys(state)), template, _convert_leaf, conditions,
                          backbone_conditions, ppt_conditions, strict, "check model.ptv3 channels/depths/heads")


def infer_model(state):
    """`config.model` fields of a PT-v3m1 / PPT-v1m1(PT-v3m1) checkpoint's architecture, and the export part.

    The shapes give the stages, depths, widths, MLP ratio and norms; heads, patch sizes and orders leave
    no trace in a state dict (qkv is (3C, C) for any head count) and come from the config.
    """
    state = normalize_keys(state)
    shape = lambda key: required_shape(state, key, "PT-v3m1 / PPT-v1m1(PT-v3m1)")
    stem = "backbone.embedding.stem.conv.weight"
    shape(stem)
    stages = lambda part: sum(1 for s in range(16) if any(k.startswith(f"backbone.{part}.{part}{s}.") for k in state))
    enc, dec = stages("enc"), stages("dec")
    if dec != enc - 1:
        raise ValueError(f"PT-v3m1 state dict with {enc} encoder and {dec} decoder stages: expected "
                         f"{enc - 1} decoder stages (the segmentation model, not enc_mode)")
    if any(".modulation." in k for k in state):
        raise ValueError("PT-v3m1 with adaptive PDNorm (pdnorm_adaptive=True): this port takes "
                         "model.norm_adaptive=False, the reference's PTv3 + PPT recipe")
    fc1 = shape("backbone.enc.enc0.block0.mlp.0.fc1.weight")
    ptv3 = {"enc_depths": tuple(block_count(state, "enc", f"enc{s}") for s in range(enc)),
            "enc_channels": (check_stem(state, stem),) + tuple(
                int(shape(f"backbone.enc.enc{s}.down.proj.weight")[0]) for s in range(1, enc)),
            "dec_depths": tuple(block_count(state, "dec", f"dec{s}") for s in range(dec)),
            "dec_channels": tuple(int(shape(f"backbone.dec.dec{s}.up.proj.0.weight")[0]) for s in range(dec)),
            "mlp_ratio": fc1[0] / fc1[1]}
    decouple = "backbone.embedding.stem.norm.norm.0.weight" in state
    fields = {"backbone": "ptv3", "ptv3": ptv3, "adapter": "pdnorm" if decouple else "none",
              "norm_decouple": decouple, "norm_adaptive": False}
    wrapper, part = ppt_fields(state, r"backbone\.embedding\.stem\.norm\.norm\.\d+\.weight")
    fields.update(wrapper)
    return fields, part
