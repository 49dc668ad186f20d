"""Pointcept PPT-v1m1 state dict -> our variables.

The reference's key list is rebuilt here from its module structure (SpUNetBase constructor loop,
PDBatchNorm, BasicBlock, PPT-v1m1; spec §1-§3, §14), not from our parameter tree."""

import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from ppt_jax import labels, models, sparse
from ppt_jax.models import pointcept_import as pi
from ppt_jax.models.norm import PDNorm
from ppt_jax.models.spunet import BasicBlock

REF_BACKBONE = ("ScanNet", "S3DIS", "Structured3D")
REF_PPT = ("Structured3D", "ScanNet", "S3DIS")
FULL = dict(channels=(32, 64, 128, 256, 256, 128, 96, 96), layers=(2, 3, 4, 6, 2, 2, 2, 2), base=32)
SMALL = dict(channels=(8, 8, 8, 8, 8, 8, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1), base=8)


def reference_shapes(channels, layers, base, context=256, text_dim=512, in_channels=6):
    """Key -> shape of a Pointcept PPT-v1m1(SpUNet-v1m3) state dict, as its constructors build it."""
    keys = {}

    def pdbn(prefix, c):
        for i in range(3):
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{prefix}.bns.{i}.{leaf}"] = (c,)
            keys[f"{prefix}.bns.{i}.num_batches_tracked"] = ()
        keys[f"{prefix}.modulation.1.weight"] = (2 * c, context)
        keys[f"{prefix}.modulation.1.bias"] = (2 * c,)

    def block(prefix, cin, cout):
        keys[f"{prefix}.conv1.weight"] = (cout, 3, 3, 3, cin)
        pdbn(f"{prefix}.bn1", cout)
        keys[f"{prefix}.conv2.weight"] = (cout, 3, 3, 3, cout)
        pdbn(f"{prefix}.bn2", cout)
        if cin != cout:
            keys[f"{prefix}.proj_conv.weight"] = (cout, 1, 1, 1, cin)
            pdbn(f"{prefix}.proj_norm", cout)

    keys["backbone.conv_input.conv.weight"] = (base, 5, 5, 5, in_channels)
    pdbn("backbone.conv_input.bn", base)
    enc, dec = base, channels[-1]
    for s in range(4):
        keys[f"backbone.down.{s}.conv.weight"] = (channels[s], 2, 2, 2, enc)
        pdbn(f"backbone.down.{s}.bn", channels[s])
        for i in range(layers[s]):
            block(f"backbone.enc.{s}.block{i}", channels[s], channels[s])
        keys[f"backbone.up.{s}.conv.weight"] = (dec, 2, 2, 2, channels[8 - s - 2])
        pdbn(f"backbone.up.{s}.bn", dec)
        for i in range(layers[8 - s - 1]):
            block(f"backbone.dec.{s}.block{i}", dec + enc if i == 0 else dec, dec)
        enc, dec = channels[s], channels[8 - s - 2]
    keys["embedding_table.weight"] = (3, context)
    keys["proj_head.weight"] = (text_dim, channels[-1])
    keys["proj_head.bias"] = (text_dim,)
    keys["class_embedding"] = (36, text_dim)
    keys["logit_scale"] = ()
    return keys


def random_state(shapes, seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(7, np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[k] = rng.normal(size=shape).astype(np.float32)
    state["logit_scale"] = np.array(np.log(100.0), np.float32)
    return {f"module.{k}": v for k, v in state.items()}          # as saved under DDP


def template(cfg, context, text_dim, n=32):
    model = models.PPT(labels.DATASETS, channels=cfg["channels"], layers=cfg["layers"],
                       base_channels=cfg["base"], context_channels=context,
                       text_table=np.eye(36, text_dim, dtype=np.float32))
    spec = sparse.HierarchySpec(capacities=(n,) * 5)

    def init(feat, coords, mask):
        h = jax.vmap(lambda c, m: sparse.build_hierarchy(c, m, spec))(coords, mask)
        return model.init(jax.random.PRNGKey(0), feat, h, jnp.zeros(1, jnp.int32))

    return jax.eval_shape(init, jax.ShapeDtypeStruct((1, n, 6), jnp.float32),
                          jax.ShapeDtypeStruct((1, n, 3), jnp.int32),
                          jax.ShapeDtypeStruct((1, n), bool))


def test_full_size_key_list_converts_completely():
    """1067 tensors in the reference state dict (spec §14); all fill our full-size PPT exactly."""
    shapes = reference_shapes(**FULL)
    assert len(shapes) == 1067
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    variables, report = pi.convert(state, template(FULL, 256, 512), labels.DATASETS)
    n_stats = sum(1 for k in shapes if k.endswith("num_batches_tracked"))
    assert report.unused_keys == [] and len(report.skipped_keys) == n_stats == 59 * 3
    assert report.used_keys == len(shapes) - n_stats - 2          # minus class_embedding, logit_scale
    assert models.count_params(variables["params"]) == 43_648_704


@pytest.fixture(scope="module")
def small_import():
    state = random_state(reference_shapes(**SMALL, context=16, text_dim=12))
    variables, report = pi.convert(state, template(SMALL, 16, 12), labels.DATASETS)
    ref = {k[len("module."):]: v for k, v in state.items()}
    return ref, variables, report


def test_leaves_by_hand(small_import, tmp_path):
    ref, v, report = small_import
    p, bb = v["params"], v["params"]["backbone"]
    assert report.unused_keys == [] and report.kept_from_template == []
    np.testing.assert_array_equal(report.text_table, ref["class_embedding"])
    assert report.logit_scale == pytest.approx(100.0)
    # Prompt rows by name: our ScanNet (0) = reference PPT row 1, our Structured3D (2) = row 0.
    np.testing.assert_array_equal(p["prompt_table"][0], ref["embedding_table.weight"][1])
    np.testing.assert_array_equal(p["prompt_table"][2], ref["embedding_table.weight"][0])
    # Stem conv: our tap (dx+2)*25 + (dy+2)*5 + (dz+2), w[tap, in, out] = spconv[out, kx, ky, kz, in].
    w, src = bb["conv_input"]["conv"]["kernel"], ref["backbone.conv_input.conv.weight"]
    dx, dy, dz, i, o = 1, -2, 0, 4, 3
    assert w[(dx + 2) * 25 + (dy + 2) * 5 + (dz + 2), i, o] == src[o, dx + 2, dy + 2, dz + 2, i]
    # Strided conv: tap 4 cx + 2 cy + cz.
    w, src = bb["down_2"]["conv"]["kernel"], ref["backbone.down.2.conv.weight"]
    assert w[4 * 1 + 2 * 0 + 1, 5, 6] == src[6, 1, 0, 1, 5]
    w, src = bb["dec_0"]["block0"]["proj_conv"]["kernel"], ref["backbone.dec.0.block0.proj_conv.weight"]
    assert w.shape == (1, 16, 8) and w[0, 11, 2] == src[2, 0, 0, 0, 11]
    # PDNorm: our S3DIS (1) = reference backbone bns.1; our Structured3D (2) = bns.2.
    bn = "backbone.enc.1.block0.bn2"
    np.testing.assert_array_equal(bb["enc_1"]["block0"]["bn2"]["scale"][2], ref[f"{bn}.bns.2.weight"])
    np.testing.assert_array_equal(v["batch_stats"]["backbone"]["enc_1"]["block0"]["bn2"]["var"][1],
                                  ref[f"{bn}.bns.1.running_var"])
    np.testing.assert_array_equal(bb["enc_1"]["block0"]["bn2"]["modulation"]["kernel"],
                                  ref[f"{bn}.modulation.1.weight"].T)
    np.testing.assert_array_equal(p["seg_head"]["proj_head"]["kernel"], ref["proj_head.weight"].T)
    # The .npz reader strips `module.` and gives the same variables.
    path = tmp_path / "ppt.npz"
    np.savez(path, **{f"module.{k}": a for k, a in ref.items()})
    again, _ = pi.convert(pi.load_state_dict(str(path)), template(SMALL, 16, 12), labels.DATASETS)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, v)


def test_bad_state_dicts_are_named(small_import):
    ref, _, _ = small_import
    tmpl = template(SMALL, 16, 12)
    broken = dict(ref)
    del broken["backbone.up.3.bn.bns.1.running_mean"]
    with pytest.raises(KeyError, match="up.3.bn.bns.1.running_mean"):
        pi.convert(broken, tmpl, labels.DATASETS)
    broken = {**ref, "proj_head.weight": np.zeros((7, 8), np.float32)}
    with pytest.raises(ValueError, match="proj_head/kernel"):
        pi.convert(broken, tmpl, labels.DATASETS)
    with pytest.raises(ValueError, match="Mars"):
        pi.convert(ref, tmpl, ("ScanNet", "Mars"))
    _, report = pi.convert({**ref, "backbone.extra.weight": np.zeros(3)}, tmpl, labels.DATASETS)
    assert report.unused_keys == ["backbone.extra.weight"]
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        pi.load_state_dict("/nowhere.npz")


def numpy_basic_block(ref, prefix, coords, x, dataset, eps=1e-3):
    """float64 reference BasicBlock (eval mode) on one sample, straight from the spconv layout."""
    index = {tuple(c): j for j, c in enumerate(coords)}
    ctx = ref["embedding_table.weight"][REF_PPT.index(dataset)].astype(np.float64)

    def subm(feat, w):
        k = w.shape[1]
        r = k // 2
        out = np.zeros((len(feat), w.shape[0]))
        for j, c in enumerate(coords):
            for d in np.ndindex(k, k, k):
                nb = index.get(tuple(c + np.array(d) - r))
                if nb is not None:
                    out[j] += w[:, d[0], d[1], d[2], :].astype(np.float64) @ feat[nb]
        return out

    def pdbn(feat, name):
        i = REF_BACKBONE.index(dataset)
        g = lambda leaf: ref[f"{prefix}.{name}.bns.{i}.{leaf}"].astype(np.float64)
        y = (feat - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")
        mod = (ctx / (1 + np.exp(-ctx))) @ ref[f"{prefix}.{name}.modulation.1.weight"].T.astype(
            np.float64) + ref[f"{prefix}.{name}.modulation.1.bias"]
        shift, scale = np.split(mod, 2)
        return y * (1 + scale) + shift

    relu = lambda a: np.maximum(a, 0)
    h = relu(pdbn(subm(x, ref[f"{prefix}.conv1.weight"]), "bn1"))
    h = pdbn(subm(h, ref[f"{prefix}.conv2.weight"]), "bn2")
    res = pdbn(subm(x, ref[f"{prefix}.proj_conv.weight"]), "proj_norm")
    return relu(h + res)


def test_converted_basic_block_matches_float64_numpy(small_import):
    ref, v, _ = small_import
    rng = np.random.default_rng(3)
    n = 30
    coords = np.stack(np.unravel_index(np.sort(rng.choice(216, n, replace=False)), (6, 6, 6)), -1)
    x = rng.normal(size=(n, 16))
    spec = sparse.HierarchySpec(capacities=(n,) * 5)
    h = jax.jit(jax.vmap(lambda c, m: sparse.build_hierarchy(c, m, spec)))(
        coords[None].astype(np.int32), np.ones((1, n), bool))
    cond = labels.DATASETS.index("S3DIS")
    block = BasicBlock(8, 0, functools.partial(PDNorm, num_conditions=3))
    sub = lambda tree: tree["backbone"]["dec_0"]["block0"]
    ctx = v["params"]["prompt_table"][cond][None]
    got = jax.jit(block.apply, static_argnums=5)({"params": sub(v["params"]), "batch_stats": sub(v["batch_stats"])},
                      x[None].astype(np.float32), h, np.array([cond]), ctx, False)
    want = numpy_basic_block(ref, "backbone.dec.0.block0", coords, x, "S3DIS")
    np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-4, atol=1e-4)


def test_bare_backbone_state_dict(small_import):
    """A SpUNet-v1m3 state dict (no `backbone.` prefix) fills the backbone; strict=False keeps the
    prompt table and head of a concrete template and says so."""
    ref, v, _ = small_import
    bare = {k[len("backbone."):]: a for k, a in ref.items() if k.startswith("backbone.")}
    tmpl = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template(SMALL, 16, 12))
    with pytest.raises(KeyError, match="embedding_table"):
        pi.convert(bare, tmpl, labels.DATASETS)
    got, report = pi.convert(bare, tmpl, labels.DATASETS, strict=False)
    assert sorted(report.kept_from_template) == ["params/prompt_table", "params/seg_head/proj_head/bias",
                                                 "params/seg_head/proj_head/kernel"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, got["params"]["backbone"], v["params"]["backbone"])
    assert not np.any(got["params"]["prompt_table"])
