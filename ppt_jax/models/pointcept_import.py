"""Import Pointcept SpUNet-v1m3 / PPT-v1m1 (and PPT-v1m2 decoupled-head) weights into `PPT` variables.

Reads a state dict as a `.npz` of numpy arrays (no torch needed) or a `.pth` checkpoint (only if
torch is importable); `checkpoint["state_dict"]` is unwrapped and the DDP `module.` prefix stripped.
A bare SpUNet-v1m3 state dict (no `backbone.` prefix) is treated as the backbone.

Every target leaf of the template variables is filled from named source keys:
- spconv weights (out, kx, ky, kz, in) -> (k**3, in, out) taps (design.md §2), except k = 1 convs,
  which spconv computes with the stored buffer viewed as (in, out) (`spconv_to_taps`);
  Linear (out, in) -> (in, out);
- PDNorm `bns.<i>.{weight,bias,running_mean,running_var}` stacked into our (D, C) leaves, where i is
  the dataset's index in the reference BACKBONE order ("ScanNet", "S3DIS", "Structured3D");
- `embedding_table.weight` rows and `seg_heads.<i>` taken in the reference PPT order
  ("Structured3D", "ScanNet", "S3DIS"); both orders are looked up by dataset name.
Every source key is used at most once, shapes are checked, unused keys are reported; the frozen
`class_embedding` buffer (the reference's CLIP table) and `exp(logit_scale)` are returned in the report.
"""

import dataclasses
import os
import re

import numpy as np
from flax import traverse_util

REF_BACKBONE_CONDITIONS = ("ScanNet", "S3DIS", "Structured3D")
REF_PPT_CONDITIONS = ("Structured3D", "ScanNet", "S3DIS")
# The reference pairs S3DIS labels with its text rows in union-index order (labels.valid_index): a
# model holding its weights predicts what it predicts only with this order.
S3DIS_ORDER = "code_faithful"
_NORM_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_NORM_MODULES = ("bn", "bn1", "bn2", "proj_norm")   # PDNorm module names (spunet.py)
_SKIPPED = re.compile(r".*num_batches_tracked$")


@dataclasses.dataclass
class ImportReport:
    filled: int                       # target leaves filled
    used_keys: int                    # source tensors consumed
    unused_keys: list                 # source keys that no target leaf asked for (excl. skipped)
    skipped_keys: list                # num_batches_tracked counters (no JAX counterpart)
    kept_from_template: list          # target paths absent from a backbone-only source (strict=False)
    text_table: np.ndarray = None     # the reference's (36, 512) class_embedding, if present
    logit_scale: float = None         # exp(logit_scale), if present


def load_state_dict(path):
    """name -> float numpy array from a .npz or (with torch installed) a .pth/.pt checkpoint."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Pointcept checkpoint at {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    elif path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path}: reading .pth needs torch; convert it to .npz elsewhere "
                              "({k: v.numpy() for k, v in state_dict.items()})") from e
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt = ckpt.get("state_dict", ckpt)
        state = {k: v.detach().cpu().numpy() for k, v in ckpt.items() if hasattr(v, "numpy")}
    else:
        raise ValueError(f"{path}: expected a .npz or .pth Pointcept state dict")
    return normalize_keys(state)


def normalize_keys(state):
    """Strip the DDP `module.` prefix; prefix a bare SpUNet state dict with `backbone.`."""
    state = {(k[len("module."):] if k.startswith("module.") else k): np.asarray(v)
             for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    return state


def spconv_to_taps(w):
    """spconv (out, kx, ky, kz, in) -> (k**3, in, out), tap = (kx*k + ky)*k + kz.

    k = 1 is the exception: spconv 2.x computes such a conv as `features @ weight.view(in, out)` on
    the stored buffer (its conv1x1 fast path), so the weight maps by a reshape, not a transpose
    (docs/model.md, "Importing Pointcept weights").
    """
    out, k, _, _, cin = w.shape
    if k == 1:
        return w.reshape(1, cin, out)
    return w.transpose(1, 2, 3, 4, 0).reshape(k ** 3, cin, out)


def _module_key(path):
    """Our module path (tuple) -> the reference's dotted module prefix."""
    parts = []
    for p in path:
        m = re.fullmatch(r"(down|up|enc|dec)_(\d+)", p)
        if p == "seg_head":
            continue
        parts.append(f"{m[1]}.{m[2]}" if m else p)
    return ".".join(parts)


class _Source:
    """The state dict with use-once bookkeeping."""

    def __init__(self, state):
        self.state, self.used = state, set()

    def __contains__(self, key):
        return key in self.state

    def take(self, key, target):
        if key not in self.state:
            raise KeyError(f"Pointcept state dict has no key {key!r} (needed for {target})")
        if key in self.used:
            raise ValueError(f"Pointcept key {key!r} would fill two target leaves (second: {target})")
        self.used.add(key)
        return np.asarray(self.state[key], np.float32)


def _norm_rows(src, prefix, leaf, n_rows, conditions, backbone_conditions, target):
    """Stack a PDNorm leaf: (D, C) from bns.<i>.*, or (1, C) from a shared bn.*."""
    name = _NORM_LEAVES[leaf]
    if n_rows == 1 and f"{prefix}.bn.{name}" in src:
        return src.take(f"{prefix}.bn.{name}", target)[None]
    return np.stack([src.take(f"{prefix}.bns.{backbone_conditions.index(c)}.{name}", target)
                     for c in conditions])


def _convert_leaf(src, path, shape, conditions, backbone_conditions, ppt_conditions):
    target = "/".join(path)
    *mods, leaf = path
    if path == ("prompt_table",):
        table = src.take("embedding_table.weight", target)
        return table[[ppt_conditions.index(c) for c in conditions]]
    m = re.fullmatch(r"seg_heads_(\d+)_(kernel|bias)", leaf)
    if m:
        d = ppt_conditions.index(conditions[int(m[1])])
        w = src.take(f"seg_heads.{d}.{'weight' if m[2] == 'kernel' else 'bias'}", target)
        return w.T if m[2] == "kernel" else w
    prefix = _module_key(mods)
    if mods[-1] in _NORM_MODULES:
        return _norm_rows(src, prefix, leaf, shape[0], conditions, backbone_conditions, target)
    if mods[-1] == "modulation":
        prefix += ".1"                                    # Sequential(SiLU, Linear)
    if leaf == "bias":
        return src.take(f"{prefix}.bias", target)
    w = src.take(f"{prefix}.weight", target)
    return spconv_to_taps(w) if w.ndim == 5 else w.T


def convert(state, template, conditions, backbone_conditions=REF_BACKBONE_CONDITIONS,
            ppt_conditions=REF_PPT_CONDITIONS, strict=True):
    """Pointcept state dict (normalised names) -> (variables like `template`, ImportReport).

    template: {"params": ..., "batch_stats": ...} of arrays or ShapeDtypeStructs (jax.eval_shape of
    `PPT.init`); conditions: the model's dataset order. strict=False keeps template leaves whose
    source is absent (e.g. the head when importing a bare backbone; needs a concrete template) and
    lists them in the report.
    """
    for name in conditions:
        for order, what in ((backbone_conditions, "backbone_conditions"),
                            (ppt_conditions, "ppt_conditions")):
            if name not in order:
                raise ValueError(f"dataset {name!r} of the model is not in the reference's {what} {order}")
    src = _Source(normalize_keys(state))
    out, kept = {}, []
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(template.get(collection, {}))
        filled = {}
        for path, leaf in flat.items():
            try:
                value = _convert_leaf(src, path, leaf.shape, conditions, backbone_conditions,
                                      ppt_conditions)
            except KeyError:
                if strict or path[0] == "backbone":
                    raise
                kept.append("/".join((collection, *path)))
                value = np.asarray(leaf)
            if value.shape != tuple(leaf.shape):
                raise ValueError(f"{collection}/{'/'.join(path)}: converted shape {value.shape} != "
                                 f"model shape {tuple(leaf.shape)} (check channels/layers/text dim)")
            filled[path] = value
        out[collection] = traverse_util.unflatten_dict(filled)
    skipped = sorted(k for k in src.state if _SKIPPED.match(k))
    extras = {"class_embedding", "logit_scale"}
    unused = sorted(k for k in src.state if k not in src.used and k not in extras and k not in skipped)
    report = ImportReport(
        filled=sum(len(traverse_util.flatten_dict(v)) for v in out.values() if v),
        used_keys=len(src.used), unused_keys=unused, skipped_keys=skipped, kept_from_template=kept,
        text_table=np.asarray(src.state["class_embedding"], np.float32)
        if "class_embedding" in src else None,
        logit_scale=float(np.exp(src.state["logit_scale"])) if "logit_scale" in src else None)
    return out, report
