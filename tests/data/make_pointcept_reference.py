"""Write tests/data/pointcept_reference.npz: spconv's and Pointcept's own outputs on tiny inputs.

Not run by the tests (they only read the .npz). To regenerate, in a scratch environment outside the
repository (torch and spconv are not project dependencies):

    python3 -m venv /tmp/venv-ref && /tmp/venv-ref/bin/pip install torch==2.13.0 spconv==2.3.8 numpy
    git clone https://github.com/Pointcept/Pointcept /tmp/Pointcept    # read, never copied here
    /tmp/venv-ref/bin/python tests/data/make_pointcept_reference.py --pointcept /tmp/Pointcept \
        --out tests/data/pointcept_reference.npz

Two parts, all on CPU with one torch thread (spconv's CPU kernels race with more):
1. `conv/*`: single spconv layers as SpUNet-v1m3 uses them (SubMConv3d k = 1, 3, 5; SparseConv3d k2 s2
   and the SparseInverseConv3d sharing its indice_key) on a 2-sample batch: input, weight in spconv's
   stored layout, output, and the gradients of sum(output * cotangent) w.r.t. input and weight.
2. `model/*`: Pointcept's PPT-v1m1 with a SpUNet-v1m3 backbone (the files
   pointcept/models/point_prompt_training/point_prompt_training_v1m1_language_guided.py and
   pointcept/models/sparse_unet/spconv_unet_v1m3_pdnorm.py of the given checkout, loaded as they are)
   at a tiny width, every state-dict tensor random, in eval mode: backbone features and seg_logits per
   condition for a 2-scene batch. Only the imports those two files make of the rest of Pointcept and
   of timm / torch_geometric / clip are replaced by small stand-ins below (the registry, the offset to
   batch-index helper, and a CLIP whose text table is overwritten by the state dict anyway).
Weights are multiples of 1/64 (stored exactly as float16, to keep the file small); outputs are float32.
"""

import argparse
import importlib.util
import json
import math
import sys
import types

import numpy as np
import spconv.pytorch as spconv
import torch

torch.set_num_threads(1)
spconv.ops.get_current_stream = lambda: 0          # spconv's CPU backward asks for a CUDA stream

MODEL = dict(base_channels=4, channels=(4, 4, 4, 4, 4, 4, 4, 4), layers=(1, 1, 1, 1, 1, 1, 1, 1),
             context_channels=8, text_dim=8)
REF_BACKBONE_CONDITIONS = ("ScanNet", "S3DIS", "Structured3D")
REF_PPT_CONDITIONS = ("Structured3D", "ScanNet", "S3DIS")


def quantized(rng, shape, std, mean=0.0):
    """Normal(mean, std) rounded to multiples of 1/64 (exact in float16 for |x| < 32)."""
    return (np.round((mean + std * rng.standard_normal(shape)) * 64) / 64).astype(np.float32)


def scene_coords(rng, sizes, side):
    """Unique random voxel coordinates per sample, (sum(sizes), 4) int32 rows (batch, x, y, z)."""
    rows = []
    for b, n in enumerate(sizes):
        flat = np.sort(rng.choice(side ** 3, n, replace=False))
        xyz = np.stack(np.unravel_index(flat, (side,) * 3), -1)
        rows.append(np.concatenate([np.full((n, 1), b), xyz], 1))
    return np.concatenate(rows).astype(np.int32)


def sparse_tensor(feat, indices, batch_size):
    shape = (indices[:, 1:].max(0) + 3).tolist()
    return spconv.SparseConvTensor(feat, torch.from_numpy(indices), shape, batch_size)


def conv_part(rng, out):
    """Single layers, forward and backward, as SpUNet-v1m3 builds and chains them."""
    indices = scene_coords(rng, (30, 20), 6)
    out["conv/indices"] = indices
    cin, cout = 3, 2
    x_np = quantized(rng, (len(indices), cin), 1.0)
    out["conv/x"] = x_np
    layers = {f"subm{k}": spconv.SubMConv3d(cin, cout, kernel_size=k, padding=k // 2 if k > 1 else 0,
                                             bias=False, indice_key=f"subm_k{k}") for k in (1, 3, 5)}
    layers["down"] = spconv.SparseConv3d(cin, cout, kernel_size=2, stride=2, bias=False, indice_key="spconv1")
    layers["up"] = spconv.SparseInverseConv3d(cout, cin, kernel_size=2, bias=False, indice_key="spconv1")
    for name, layer in layers.items():
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(quantized(rng, tuple(layer.weight.shape), 0.5)))
        out[f"conv/{name}/weight"] = layer.weight.detach().numpy()
    x = torch.from_numpy(x_np).requires_grad_(True)
    st = sparse_tensor(x, indices, 2)
    for name in ("subm1", "subm3", "subm5", "down"):
        y = layers[name](st)
        cot = quantized(rng, tuple(y.features.shape), 1.0)
        dx, dw = torch.autograd.grad((y.features * torch.from_numpy(cot)).sum(), [x, layers[name].weight])
        out.update({f"conv/{name}/y": y.features.detach().numpy(), f"conv/{name}/cotangent": cot,
                    f"conv/{name}/dx": dx.numpy(), f"conv/{name}/dw": dw.numpy()})
        if name == "down":
            out["conv/down/indices"] = y.indices.numpy()
            coarse = y
    # The inverse conv on the down conv's output sites (its own input), back to the fine sites.
    xc_np = quantized(rng, tuple(coarse.features.shape), 1.0)
    xc = torch.from_numpy(xc_np).requires_grad_(True)
    y = layers["up"](coarse.replace_feature(xc))
    assert np.array_equal(y.indices.numpy(), indices), "inverse conv must return the fine sites in order"
    cot = quantized(rng, tuple(y.features.shape), 1.0)
    dx, dw = torch.autograd.grad((y.features * torch.from_numpy(cot)).sum(), [xc, layers["up"].weight])
    out.update({"conv/up/x": xc_np, "conv/up/y": y.features.detach().numpy(), "conv/up/cotangent": cot,
                "conv/up/dx": dx.numpy(), "conv/up/dw": dw.numpy()})


def load_pointcept(root):
    """PPT-v1m1 and SpUNet-v1m3 from a Pointcept checkout, with stand-ins for their other imports."""
    registry = {}

    class Registry:
        def register_module(self, name):
            def add(cls):
                registry[name] = cls
                return cls
            return add

        def build(self, cfg):
            cfg = dict(cfg)
            return registry[cfg.pop("type")](**cfg)

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    class FakeClip:                                   # class_embedding is replaced by the state dict
        def __init__(self):
            self.text_projection = torch.zeros(16, MODEL["text_dim"])
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))

        def requires_grad_(self, flag):
            return self

        def encode_text(self, tokens):
            return torch.ones(len(tokens), MODEL["text_dim"])

    for name in ("pointcept", "pointcept.models", "timm", "torch_geometric"):
        module(name)
    module("pointcept.models.builder", MODELS=Registry())
    misc = importlib.util.spec_from_file_location("pointcept.models.utils",
                                                  f"{root}/pointcept/models/utils/misc.py")
    utils = importlib.util.module_from_spec(misc)
    sys.modules["pointcept.models.utils"] = utils
    misc.loader.exec_module(utils)                    # offset2batch, the reference's own
    module("pointcept.models.utils.structure", Point=type("Point", (), {}))
    module("pointcept.models.losses", build_criteria=lambda cfg: None)   # test mode: no loss
    module("timm.layers", trunc_normal_=torch.nn.init.trunc_normal_)
    module("torch_geometric.utils", scatter=None)     # only used by enc_mode
    module("clip", load=lambda *a, **k: (FakeClip(), None), tokenize=lambda texts: list(texts))
    for path in ("sparse_unet/spconv_unet_v1m3_pdnorm.py",
                 "point_prompt_training/point_prompt_training_v1m1_language_guided.py"):
        spec = importlib.util.spec_from_file_location(path.replace("/", "."), f"{root}/pointcept/models/{path}")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return Registry().build


def random_state(model, rng):
    """Every tensor of the state dict random (quantized), BN running variances positive."""
    state = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("num_batches_tracked"):
            state[key] = value
            continue
        if key == "logit_scale":
            arr = np.float32(math.log(100.0)) * np.ones(shape, np.float32)
        elif key == "class_embedding":
            arr = rng.standard_normal(shape)
            arr = (arr / np.linalg.norm(arr, axis=1, keepdims=True)).astype(np.float32)
        elif key.endswith("running_var"):
            arr = np.round(rng.uniform(0.5, 2.0, shape) * 64).astype(np.float32) / 64
        elif key.endswith("bns.0.weight") or key.endswith("bns.1.weight") or key.endswith("bns.2.weight"):
            arr = quantized(rng, shape, 0.2, 1.0)
        elif value.ndim == 5:                          # spconv (out, k, k, k, in): keep activations O(1)
            arr = quantized(rng, shape, 1.0 / math.sqrt(np.prod(shape[1:])))
        elif key.endswith(".weight") and value.ndim == 2 and "embedding" not in key:
            arr = quantized(rng, shape, 1.0 / math.sqrt(shape[1]))
        else:
            arr = quantized(rng, shape, 0.5 if "embedding" not in key else 1.0)
        state[key] = torch.from_numpy(np.asarray(arr, np.float32))
    model.load_state_dict(state)
    return {k: v.numpy() for k, v in state.items()}


class Cfg(dict):
    """Attribute access, as Pointcept's config dicts (addict) give."""
    __getattr__ = dict.__getitem__


def model_part(root, rng, out):
    build = load_pointcept(root)
    m = MODEL
    backbone = Cfg(type="SpUNet-v1m3", in_channels=6, num_classes=0, base_channels=m["base_channels"],
                    context_channels=m["context_channels"], channels=m["channels"], layers=m["layers"],
                    enc_mode=False, conditions=REF_BACKBONE_CONDITIONS, zero_init=False,
                    norm_decouple=True, norm_adaptive=True, norm_affine=True)
    model = build(dict(type="PPT-v1m1", backbone=backbone, criteria=None,
                       backbone_out_channels=m["channels"][-1], context_channels=m["context_channels"],
                       conditions=REF_PPT_CONDITIONS, template="[x]", clip_model="ViT-B/16",
                       backbone_mode=False))
    model.eval()
    state = random_state(model, rng)
    # One flat float16 array for the quantized tensors (one npz entry each would triple the file).
    packed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
              and k not in ("class_embedding", "logit_scale")}
    flat = np.concatenate([v.ravel() for v in packed.values()])
    assert np.array_equal(flat.astype(np.float16).astype(np.float32), flat), "weights must be exact in float16"
    out["model/state_keys"] = np.array(json.dumps({k: list(v.shape) for k, v in packed.items()}))
    out["model/state_values"] = flat.astype(np.float16)
    out["model/state/class_embedding"] = state["class_embedding"]
    out["model/state/logit_scale"] = state["logit_scale"]
    sizes = (36, 24)
    indices = scene_coords(rng, sizes, 7)
    color = rng.integers(0, 256, (len(indices), 3))
    normal = rng.standard_normal((len(indices), 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    feat = np.concatenate([color / 255.0, normal], 1).astype(np.float32)
    out.update({"model/grid_coord": indices[:, 1:], "model/offset": np.cumsum(sizes).astype(np.int32),
                "model/feat": feat})
    with torch.no_grad():
        for condition in REF_PPT_CONDITIONS:
            data = {"grid_coord": torch.from_numpy(indices[:, 1:]), "feat": torch.from_numpy(feat),
                    "offset": torch.from_numpy(np.cumsum(sizes)), "condition": [condition],
                    "coord": torch.from_numpy(indices[:, 1:].astype(np.float32))}
            out[f"model/{condition}/seg_logits"] = model(dict(data))["seg_logits"].numpy()
            data["context"] = model.embedding_table(torch.tensor([REF_PPT_CONDITIONS.index(condition)]))
            out[f"model/{condition}/backbone"] = model.backbone(data).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pointcept", required=True, help="a Pointcept checkout (read only)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    from importlib import metadata
    out = {"meta/versions": np.array(f"torch {torch.__version__}, spconv {metadata.version('spconv')}")}
    conv_part(rng, out)
    model_part(args.pointcept, rng, out)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {len(out)} arrays")


if __name__ == "__main__":
    main()
