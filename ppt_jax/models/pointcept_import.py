"""Import Pointcept SpUNet-v1m3 / PPT-v1m1 (and PPT-v1m2 decoupled-head) weights into `PPT` variables,
and the import command for both backbones (SpUNet-v1m3 here, PT-v3m1 through `ptv3_import`).

    python -m ppt_jax.models.pointcept_import --checkpoint model_best.pth --out runs/pointcept/export \
        [--config configs/joint.py] [--color_norm unit|legacy] [--s3dis_order code_faithful|intended]

writes an export (the same files as `python -m ppt_jax.main --mode export`) that `ppt_jax.predict`,
`configs/finetune.py` (config.init.export_dir; `:ptv3` for PTv3) and `--mode eval|test --checkpoint=export`
load. The backbone is told by the stem's key (`BACKBONES`); the architecture (widths, depths, norms, head)
is read from the checkpoint; data, sparse and text settings (and PTv3's heads, patch sizes and orders,
which no state dict records) come from `--config`, by default the backbone's recipe (`DEFAULT_CONFIGS`).
The export also holds the checkpoint's own CLIP table (`class_embedding`) in its text cache, so no text
encoder runs. Defaults: the reference's S3DIS column order
(`S3DIS_ORDER`) and `color_norm="unit"` (Pointcept >= v1.6.0; `legacy` for checkpoints trained
before it); the printed report says which were used (docs/model.md, "Importing Pointcept weights").

Reads a state dict as a `.npz` of numpy arrays (no torch needed) or a `.pth` checkpoint (only if
torch is importable); `checkpoint["state_dict"]` is unwrapped and the DDP `module.` prefix stripped.
A bare SpUNet-v1m3 state dict (no `backbone.` prefix) is treated as the backbone (a `backbone` export).

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

import argparse
import dataclasses
import os
import re
import sys

import numpy as np
from flax import traverse_util

REF_BACKBONE_CONDITIONS = ("ScanNet", "S3DIS", "Structured3D")
REF_PPT_CONDITIONS = ("Structured3D", "ScanNet", "S3DIS")
# The reference pairs S3DIS labels with its text rows in union-index order (labels.valid_index): a
# model holding its weights predicts what it predicts only with this order.
S3DIS_ORDER = "code_faithful"
LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var", "kernel": "weight"}
"""Our leaf name -> the reference's tensor name (norms, Linear and conv weights)."""
_NORM_MODULES = ("bn", "bn1", "bn2", "proj_norm")   # PDNorm module names (spunet.py)
_SKIPPED = re.compile(r".*num_batches_tracked$")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


class StateSource:
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


def norm_rows(src, shared, per_dataset, leaf, n_rows, conditions, backbone_conditions, target):
    """A PDNorm leaf (D, C) stacked from the per-dataset norms `<per_dataset>.<i>.<name>` (i: the dataset's
    index in `backbone_conditions`), or (1, C) from the shared norm `<shared>.<name>` if the model has one
    row and the state dict has that norm (shared by the SpUNet and PTv3 importers)."""
    name = LEAVES[leaf]
    if n_rows == 1 and f"{shared}.{name}" in src:
        return src.take(f"{shared}.{name}", target)[None]
    return np.stack([src.take(f"{per_dataset}.{backbone_conditions.index(c)}.{name}", target)
                     for c in conditions])


def wrapper_leaf(src, path, conditions, ppt_conditions):
    """A leaf of PPT's own modules (prompt table, language head's projection, decoupled heads), taken in
    the reference PPT order by dataset name; None for a backbone leaf (shared by both importers)."""
    target = "/".join(path)
    *mods, leaf = path
    if path == ("prompt_table",):
        return src.take("embedding_table.weight", target)[[ppt_conditions.index(c) for c in conditions]]
    if mods == ["seg_head", "proj_head"]:
        w = src.take(f"proj_head.{LEAVES[leaf]}", target)
        return w.T if leaf == "kernel" else w
    m = re.fullmatch(r"seg_heads_(\d+)_(kernel|bias)", leaf)
    if mods == ["seg_head"] and m:
        w = src.take(f"seg_heads.{ppt_conditions.index(conditions[int(m[1])])}.{LEAVES[m[2]]}", target)
        return w.T if m[2] == "kernel" else w
    return None


def _convert_leaf(src, path, shape, conditions, backbone_conditions, ppt_conditions):
    value = wrapper_leaf(src, path, conditions, ppt_conditions)
    if value is not None:
        return value
    target = "/".join(path)
    *mods, leaf = path
    prefix = _module_key(mods)
    if mods[-1] in _NORM_MODULES:
        return norm_rows(src, f"{prefix}.bn", f"{prefix}.bns", leaf, shape[0], conditions, backbone_conditions,
                         target)
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
    return fill_variables(StateSource(normalize_keys(state)), template, _convert_leaf, conditions,
                          backbone_conditions, ppt_conditions, strict, "check channels/layers/text dim")


def fill_variables(src, template, convert_leaf, conditions, backbone_conditions, ppt_conditions, strict, hint):
    """Fill every leaf of `template` with `convert_leaf(src, path, shape, ...)` from a state-dict source
    (`.state` dict, `.used` keys) and report what was used, skipped and kept (shared by the SpUNet and
    PTv3 importers); `hint` says what to check when a converted shape does not fit."""
    for name in conditions:
        for order, what in ((backbone_conditions, "backbone_conditions"),
                            (ppt_conditions, "ppt_conditions")):
            if name not in order:
                raise ValueError(f"dataset {name!r} of the model is not in the reference's {what} {order}")
    out, kept = {}, []
    for collection in ("params", "batch_stats"):
        filled = {}
        for path, leaf in traverse_util.flatten_dict(template.get(collection, {})).items():
            try:
                value = convert_leaf(src, path, leaf.shape, conditions, backbone_conditions, ppt_conditions)
            except KeyError:
                if strict or path[0] == "backbone":
                    raise
                kept.append("/".join((collection, *path)))
                value = np.asarray(leaf)
            if value.shape != tuple(leaf.shape):
                raise ValueError(f"{collection}/{'/'.join(path)}: converted shape {value.shape} != "
                                 f"model shape {tuple(leaf.shape)} ({hint})")
            filled[path] = value
        out[collection] = traverse_util.unflatten_dict(filled)
    skipped = sorted(k for k in src.state if _SKIPPED.match(k))
    extras = {"class_embedding", "logit_scale"}
    unused = sorted(k for k in src.state if k not in src.used and k not in extras and k not in skipped)
    report = ImportReport(
        filled=sum(len(traverse_util.flatten_dict(v)) for v in out.values() if v),
        used_keys=len(src.used), unused_keys=unused, skipped_keys=skipped, kept_from_template=kept,
        text_table=np.asarray(src.state["class_embedding"], np.float32)
        if "class_embedding" in src.state else None,
        logit_scale=float(np.exp(src.state["logit_scale"])) if "logit_scale" in src.state else None)
    return out, report


def block_count(state, part, stage):
    names = {k.split(".")[3] for k in state if k.startswith(f"backbone.{part}.{stage}.block")}
    return len(names)


def required_shape(state, key, what):
    if key not in state:
        raise ValueError(f"not a {what} state dict: no {key!r}")
    return state[key].shape


def check_stem(state, key):
    """The stem conv (C, k, k, k, 6): colour + normal input, as the data pipeline gives."""
    stem = state[key].shape
    if len(stem) != 5 or stem[-1] != 6:
        raise ValueError(f"{key} has shape {stem}: expected (C, k, k, k, 6) (colour + normal input)")
    return int(stem[0])


def ppt_fields(state, norm_weight_re):
    """`config.model` fields of the PPT wrapper (prompts, head) and the export part, shared by both
    backbones; `norm_weight_re` matches the stem norm's per-dataset weights (their count is checked)."""
    fields = {}
    if "embedding_table.weight" in state:
        fields["context_channels"] = int(state["embedding_table.weight"].shape[1])
    prompts = state["embedding_table.weight"].shape[0] if "embedding_table.weight" in state else 0
    norms = sum(1 for k in state if re.fullmatch(norm_weight_re, k))
    for what, count, order in (("embedding_table", prompts, REF_PPT_CONDITIONS),
                               ("the stem's per-dataset norms", norms, REF_BACKBONE_CONDITIONS)):
        if count and count != len(order):
            raise ValueError(f"{what}: {count} datasets; the reference's configs have {len(order)} "
                             f"{order}, the orders this importer maps by name")
    if "proj_head.weight" in state:
        fields["head"] = "language"
    elif "seg_heads.0.weight" in state:
        fields["head"] = "decoupled"
    return fields, "full" if "head" in fields else "backbone"


def infer_model(state):
    """`config.model` fields of the checkpoint's SpUNet-v1m3 / PPT architecture, and the export part.

    SpUNetBase builds down[s] with channels[s] outputs and up[s] with channels[7 - s]; enc[s] holds
    layers[s] blocks and dec[s] layers[7 - s]. Raises ValueError naming the first key it lacks.
    """
    state = normalize_keys(state)
    shape = lambda key: required_shape(state, key, "SpUNet-v1m3 / PPT-v1m1")
    shape("backbone.conv_input.conv.weight")
    base = check_stem(state, "backbone.conv_input.conv.weight")
    if "backbone.down.4.conv.weight" in state:
        raise ValueError("the backbone has more than 4 stages; this SpUNet has 4")
    down = [shape(f"backbone.down.{s}.conv.weight")[0] for s in range(4)]
    up = [shape(f"backbone.up.{s}.conv.weight")[0] for s in range(4)]
    fields = {"backbone": "spunet", "channels": tuple(down) + tuple(reversed(up)),
              "layers": tuple(block_count(state, "enc", s) for s in range(4))
              + tuple(block_count(state, "dec", s) for s in reversed(range(4))),
              "base_channels": base, "adapter": "pdnorm",
              "norm_decouple": "backbone.conv_input.bn.bns.0.weight" in state,
              "norm_adaptive": "backbone.conv_input.bn.modulation.1.weight" in state}
    wrapper, part = ppt_fields(state, r"backbone\.conv_input\.bn\.bns\.\d+\.weight")
    fields.update(wrapper)
    if fields["norm_adaptive"]:
        fields["context_channels"] = int(shape("backbone.conv_input.bn.modulation.1.weight")[1])
    return fields, part


BACKBONES = {"spunet": "backbone.conv_input.conv.weight", "ptv3": "backbone.embedding.stem.conv.weight"}
"""Each backbone's stem weight: its presence tells the importer which backbone a state dict holds."""
DEFAULT_CONFIGS = {"spunet": "configs/joint.py", "ptv3": "configs/joint_ptv3.py"}
FINETUNE_CONFIGS = {"spunet": "configs/finetune.py", "ptv3": "configs/finetune.py:ptv3"}


def backbone_of(state):
    """"spunet" (SpUNet-v1m3) or "ptv3" (PT-v3m1), from the stem's key."""
    state = normalize_keys(state)
    found = [name for name, key in BACKBONES.items() if key in state]
    if len(found) != 1:
        raise ValueError(f"not a Pointcept SpUNet-v1m3 or PT-v3m1 (PPT-v1m1/v1m2) state dict: expected "
                         f"exactly one of {sorted(BACKBONES.values())}, found {found or 'none'}")
    return found[0]


def _architecture(backbone, state):
    """(config.model fields, export part, the converter) of the state dict's backbone."""
    if backbone == "ptv3":
        from ppt_jax.models import ptv3_import
        return (*ptv3_import.infer_model(state), ptv3_import.convert)
    return (*infer_model(state), convert)


def _load_config(spec):
    """get_config(arg) of a config file given as `path[:arg]` (as `--config` of ppt_jax.main; a relative
    path that does not exist from here is looked up from the repository root)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path) and not os.path.isabs(path):
        path = os.path.join(_REPO, path) if os.path.isfile(os.path.join(_REPO, path)) else path
    module_spec = importlib.util.spec_from_file_location("import_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _describe(m):
    """One line of the imported architecture (config.model fields)."""
    if m.backbone == "ptv3":
        p = m.ptv3
        arch = (f"PT-v3m1 encoder depths {p.enc_depths} channels {p.enc_channels}, decoder depths "
                f"{p.dec_depths} channels {p.dec_channels}, mlp ratio {p.mlp_ratio}; from the config (no "
                f"state dict records them): heads {p.enc_heads}/{p.dec_heads}, patch sizes "
                f"{p.enc_patch_size}/{p.dec_patch_size}, orders {p.orders}")
    else:
        arch = f"SpUNet-v1m3 channels {m.channels}, layers {m.layers}, base {m.base_channels}"
    return (f"architecture: {arch}; context {m.get('context_channels')}, head {m.head}, norm decouple "
            f"{m.norm_decouple} adaptive {m.norm_adaptive}; conditions {tuple(m.conditions)}")


def _overrides(model, reference, prefix="--config.model"):
    """`--config.model.X=V` flags that turn `reference`'s model fields into `model`'s (nested ptv3 too;
    not the fields that the model's backbone does not read)."""
    from ppt_jax.models import ppt

    unread = ppt.SPUNET_FIELDS if model.get("backbone") == "ptv3" else ("ptv3",)
    flags = []
    for key, value in sorted(model.items()):
        if key in ("s3dis_order", "text_table", *unread) or key not in reference:
            continue
        if isinstance(value, dict):
            flags += _overrides(value, reference[key], f"{prefix}.{key}")
        elif (tuple(value) if isinstance(value, list) else value) != (
                tuple(reference[key]) if isinstance(reference[key], list) else reference[key]):
            text = str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)
            flags.append(f"{prefix}.{key}={text}" if " " not in text else f"'{prefix}.{key}={text}'")
    return flags


def import_checkpoint(checkpoint, out_dir, config=None, s3dis_order=S3DIS_ORDER, color_norm=None):
    """Checkpoint -> export at `out_dir` (via the trainer's export writer); returns (report lines, part,
    backbone, the flags of `python -m ppt_jax.main` that fine-tune from it).

    `config` supplies the data, sparse and text settings, and for PTv3 what no state dict records
    (heads, patch sizes, orders); None = the backbone's recipe (`DEFAULT_CONFIGS`). Its model fields
    are replaced by the checkpoint's architecture, `model.s3dis_order` by `s3dis_order`, and
    `data.color_norm` by `color_norm` (None keeps the config's).
    """
    import jax
    import ml_collections

    from ppt_jax import labels
    from ppt_jax.text import cache, table
    from ppt_jax.train import checkpoint as ckpt, setup

    state = load_state_dict(checkpoint)
    backbone = backbone_of(state)
    fields, part, convert_fn = _architecture(backbone, state)
    config = ml_collections.ConfigDict((config or _load_config(DEFAULT_CONFIGS[backbone])).to_dict())
    ptv3_fields = fields.pop("ptv3", None)
    config.model.update(fields)
    if ptv3_fields is not None:
        from ppt_jax.models import ptv3
        config.model.ptv3 = {**ptv3.defaults(), **config.model.ptv3.to_dict(), **ptv3_fields}
    config.model.s3dis_order = s3dis_order
    if color_norm is not None:
        config.data.color_norm = color_norm
    config.init.export_dir = ""
    names = tuple(config.model.conditions)
    text_table = None
    if config.model.head == "language":
        if "class_embedding" not in state:
            raise ValueError(f"{checkpoint}: a language-guided head without its class_embedding buffer")
        text_table = np.asarray(state["class_embedding"], np.float32)
        norms = np.linalg.norm(text_table, axis=-1) if text_table.ndim == 2 else None
        if norms is None or text_table.shape[0] != len(labels.UNION_NAMES) or not np.allclose(norms, 1, atol=1e-4):
            raise ValueError(f"{checkpoint}: class_embedding {text_table.shape} is not "
                             f"{len(labels.UNION_NAMES)} unit rows (the reference's CLIP table)")
        config.text.update(encoder="clip", model_path="", template="[x]", fallback="", cache_dir="")
    shapes = ml_collections.ConfigDict(config.to_dict())
    if part == "backbone":
        shapes.model.head = "decoupled"       # any head: only the backbone is exported
    model = setup.build_model(shapes, text_table)
    template = jax.eval_shape(lambda: setup.init_variables(model, shapes, config.seed))
    if part == "backbone":
        template = {k: {"backbone": v["backbone"]} for k, v in template.items()}
    variables, report = convert_fn(state, template, names)
    if report.unused_keys:
        raise ValueError(f"{checkpoint}: {len(report.unused_keys)} tensors have no place in the model "
                         f"{fields} (first: {report.unused_keys[:3]}): not this architecture")
    if report.logit_scale is not None and not np.isclose(report.logit_scale, model.logit_scale, rtol=1e-5):
        raise ValueError(f"{checkpoint}: exp(logit_scale) = {report.logit_scale:.6g}, the model's is "
                         f"{model.logit_scale} (frozen in every reference config)")
    ckpt.export(out_dir, variables, config.to_dict(), part=part)
    if text_table is not None:
        # The checkpoint's table, cached under the spec the export's config asks for: no encoder runs.
        spec = table.table_spec("clip", labels.UNION_NAMES, "[x]", None)
        cache.save(os.path.join(out_dir, "text"), spec, text_table,
                   {"label": "class_embedding of the Pointcept checkpoint", "source": os.path.abspath(checkpoint),
                    "dim": int(text_table.shape[1]), "bpe_path": None})
    finetune = FINETUNE_CONFIGS[backbone]
    flags = [f"--config={finetune}", f"--config.init.export_dir={os.path.abspath(out_dir)}",
             *_overrides(config.model.to_dict(), _load_config(finetune).model.to_dict()),
             f"--config.model.s3dis_order={s3dis_order}", f"--config.data.color_norm={config.data.color_norm}"]
    lines = [
        f"{checkpoint}: {report.used_keys} tensors -> {report.filled} arrays ({part} model), "
        f"{len(report.skipped_keys)} BN counters skipped",
        _describe(config.model),
        f"S3DIS columns: model.s3dis_order={s3dis_order!r}"
        + (" (the reference's order: predictions match it)" if s3dis_order == S3DIS_ORDER else
           " (NOT the reference's order: S3DIS predictions will differ from the checkpoint's)"),
        f"colour input: data.color_norm={config.data.color_norm!r} ("
        + ("color / 255, Pointcept >= v1.6.0; use --color_norm legacy for checkpoints trained before "
           "2025-03-21" if config.data.color_norm == "unit" else "color / 127.5 - 1, Pointcept < v1.6.0") + ")",
        "text table: " + ("the checkpoint's class_embedding " + str(text_table.shape) + f", logit scale "
                           f"{report.logit_scale:.6g}" if text_table is not None else "none (no language head)"),
        f"export written to {os.path.abspath(out_dir)}",
    ]
    return lines, part, backbone, flags


def main(argv=None):
    from ppt_jax import labels
    from ppt_jax.data import config as data_config

    p = argparse.ArgumentParser(prog="python -m ppt_jax.models.pointcept_import",
                                description="Pointcept SpUNet-v1m3 / PT-v3m1 (PPT) checkpoint -> ppt_jax export")
    p.add_argument("--checkpoint", required=True, help="Pointcept .pth (needs torch) or .npz state dict")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--config", help="config file for the data, sparse and text settings (PTv3: also heads, "
                                    f"patch sizes, orders); default: the backbone's recipe {DEFAULT_CONFIGS}")
    p.add_argument("--s3dis_order", default=S3DIS_ORDER, choices=labels.S3DIS_ORDERS,
                   help="S3DIS label -> text row order (default: the reference's, as trained)")
    p.add_argument("--color_norm", choices=tuple(data_config.COLOR_NORMS),
                   help="colour input: unit (Pointcept >= v1.6.0) or legacy (before); default: the config's")
    args = p.parse_args(argv)
    try:
        config = _load_config(args.config) if args.config else None
        lines, part, backbone, flags = import_checkpoint(args.checkpoint, args.out, config, args.s3dis_order,
                                               args.color_norm)
    except (OSError, ImportError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    out = os.path.abspath(args.out)
    if part == "full":
        print(f"predict:   python -m ppt_jax.predict --checkpoint {out} --dataset scannet --input X.ply --out DIR")
        print(f"evaluate:  python -m ppt_jax.main --config={args.config or DEFAULT_CONFIGS[backbone]} "
              f"--mode=test --checkpoint=export --config.init.export_dir={out}")
    print("fine-tune: python -m ppt_jax.main " + " ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
