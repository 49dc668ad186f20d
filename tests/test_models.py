"""PPT model: PDNorm statistics vs float64 numpy, padding invariance, per-dataset BN updates,
zero-init identity, heads/masks per dataset, hand-computed language-guided loss, full-size count."""

import dataclasses
import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from configs import base
from ppt_jax import labels, models, sparse
from ppt_jax.models import heads, norm, ptv3, spunet
from ppt_jax.models.adapters import PromptAdd, PromptCrossAttention
from ppt_jax.models.norm import PDNorm
from ppt_jax.train.step import build_hierarchies

DATASETS = labels.DATASETS                       # ScanNet 20, S3DIS 13, Structured3D 25 classes
SMALL = dict(base.MODEL_SIZES["tiny"], context_channels=16)


def unit_rows(rng, n, d):
    t = rng.normal(size=(n, d))
    return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)


def scenes(rng, sizes, capacity, box=7):
    """Batch of random voxel sets (unique coords per sample), padded to `capacity` sites."""
    b = len(sizes)
    coords = np.zeros((b, capacity, 3), np.int32)
    mask = np.zeros((b, capacity), bool)
    feat = np.zeros((b, capacity, 6), np.float32)
    for i, n in enumerate(sizes):
        flat = np.sort(rng.choice(box ** 3, n, replace=False))
        coords[i, :n] = np.stack(np.unravel_index(flat, (box,) * 3), -1)
        mask[i, :n] = True
        feat[i, :n] = rng.normal(size=(n, 6))
    return coords, mask, feat


@functools.partial(jax.jit, static_argnums=2)
def build(coords, mask, capacity):
    return build_hierarchies(coords, mask, sparse.HierarchySpec(capacities=(capacity,) * 5))


def small_ppt(text_dim=16, **kw):
    rng = np.random.default_rng(0)
    return models.PPT(DATASETS, **{**SMALL, **kw}, text_table=unit_rows(rng, 36, text_dim))


def filled_variables(model, feat, h, cond, seed=0):
    """Random variables of the model's shapes without compiling its init (XLA CPU compiles every
    random op separately, ~0.15 s each); the model's own init is tested in test_init_matches_reference."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feat, h, cond)
    fill = {"scale": np.ones, "var": np.ones, "mean": np.zeros}
    return jax.tree_util.tree_map_with_path(
        lambda p, s: fill.get(p[-1].key, lambda shape: 0.2 * rng.normal(size=shape))(s.shape)
        .astype(np.float32), shapes)


@pytest.fixture(scope="module")
def small_batch():
    """A padded, mixed-dataset batch, the small model and random variables for it."""
    rng = np.random.default_rng(6)
    coords, mask, feat = scenes(rng, [40, 23], 48, box=20)  # >= 2 sites per sample at every level
    h = build(coords, mask, 48)
    cond = np.array([0, 2])
    model = small_ppt()
    v = filled_variables(model, feat, h, cond)
    return model, v, (coords, mask, feat, h, cond)


def train_apply(model):
    return jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def train_step(small_batch):
    """Loss, logits, updated statistics and gradients of one train-mode step (compiled once; the
    logits are the reference of the padding and bfloat16 tests)."""
    model, v, (coords, mask, feat, h, cond) = small_batch
    segment = np.where(mask, np.random.default_rng(6).integers(0, 13, mask.shape), -1)

    def loss_fn(params, feat, h, segment):
        logits, upd = model.apply({"params": params, "batch_stats": v["batch_stats"]}, feat, h,
                                  cond, train=True, mutable=["batch_stats"])
        return models.segmentation_loss(logits, segment), (logits, upd)

    (loss, (logits, upd)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        v["params"], feat, h, segment)
    return loss, np.asarray(logits), upd, grads


# ---------------------------------------------------------------- PDNorm vs float64 numpy

def pdnorm(**kw):
    """PDNorm over the 3 datasets with config.model's settings (the reference's), `kw` overriding them."""
    m = base.model_config(DATASETS)
    return PDNorm(**{"num_conditions": 3, "decouple": m.norm_decouple, "adaptive": m.norm_adaptive,
                     "zero_init": m.zero_init, "momentum": m.bn_momentum, "epsilon": m.bn_epsilon,
                     "group_size": m.bn_group_size, "masked_input": False, **kw})


def numpy_pdnorm(x, mask, cond, params, ctx, group, eps=1e-3):
    """Reference: per (group, condition) masked biased stats, row's own affine, then modulation."""
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    b = len(x)
    g = group or b
    for row in range(b):
        rows = [r for r in range(row // g * g, row // g * g + g) if cond[r] == cond[row]]
        sites = np.concatenate([x[r][mask[r]] for r in rows])
        mean, var = sites.mean(0), sites.var(0)
        y = (x[row] - mean) / np.sqrt(var + eps) * params["scale"][cond[row]] + params["bias"][cond[row]]
        z = ctx[row] / (1 + np.exp(-ctx[row]))                    # SiLU
        mod = z @ np.asarray(params["modulation"]["kernel"], np.float64) + params["modulation"]["bias"]
        c = x.shape[-1]
        out[row] = y * (1 + mod[c:]) + mod[:c]
    return out


@pytest.mark.parametrize("group", [0, 2])
def test_pdnorm_matches_numpy_mixed_batch(group):
    rng = np.random.default_rng(1)
    b, n, c = 4, 12, 5
    x = (rng.normal(size=(b, n, c)) * 3 + 2).astype(np.float32)
    mask = rng.random((b, n)) < 0.7
    mask[:, 0] = True
    x[~mask] = 1e3                                   # padding garbage must not enter the stats
    cond = np.array([0, 1, 0, 2])
    ctx = rng.normal(size=(b, 16)).astype(np.float32)
    norm = pdnorm(group_size=group)
    variables = norm.init(jax.random.PRNGKey(0), x, mask, cond, ctx, train=False)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    params["scale"] = rng.normal(size=(3, c)).astype(np.float32)
    params["bias"] = rng.normal(size=(3, c)).astype(np.float32)
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    y, upd = norm.apply(variables, x, mask, cond, ctx, train=True, mutable=["batch_stats"])
    want = numpy_pdnorm(x, mask, cond, params, ctx, group)
    np.testing.assert_allclose(np.asarray(y)[mask], want[mask], rtol=1e-4, atol=1e-4)
    # Running stats: pooled over the whole batch per condition, torch momentum 0.01, unbiased var.
    for d in range(3):
        sites = np.concatenate([x[r][mask[r]] for r in range(b) if cond[r] == d]).astype(np.float64)
        np.testing.assert_allclose(upd["batch_stats"]["mean"][d], 0.01 * sites.mean(0), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(upd["batch_stats"]["var"][d], 0.99 + 0.01 * sites.var(0, ddof=1),
                                   rtol=1e-4)


def test_pdnorm_only_present_conditions_update():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 10, 4)).astype(np.float32)
    mask = np.ones((2, 10), bool)
    ctx = rng.normal(size=(2, 16)).astype(np.float32)
    norm = pdnorm()
    v = norm.init(jax.random.PRNGKey(0), x, mask, np.array([1, 1]), ctx, train=False)
    for cond, moved in (([1, 1], {1}), ([0, 2], {0, 2})):
        _, upd = norm.apply(v, x, mask, np.array(cond), ctx, train=True, mutable=["batch_stats"])
        for d in range(3):
            changed = not np.array_equal(upd["batch_stats"]["mean"][d], v["batch_stats"]["mean"][d])
            assert changed == (d in moved), (cond, d)


def test_ppt_holds_the_only_model_defaults():
    """config.model is the one source of the model's settings: models.PPT holds their defaults
    (configs/base.py copies them into config.model) and the modules it passes them to have none."""
    for cls in (spunet.SpUNet, PDNorm, heads.DecoupledHead, heads.UnionHead, heads.LanguageHead, PromptAdd,
                PromptCrossAttention):
        own = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")
               and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
        assert not own, (cls.__name__, own)
    assert not {"decouple", "bn_momentum", "bn_epsilon", "bn_group_size", "dtype"} & set(ptv3.defaults())


def test_zero_init_is_identity():
    """zero_init: the modulation and the add/cross-attention adapters are the identity at init."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 6)).astype(np.float32)
    mask = np.ones((2, 9), bool)
    cond, ctx = np.array([0, 2]), rng.normal(size=(2, 16)).astype(np.float32)
    key = jax.random.PRNGKey(0)
    plain = pdnorm(adaptive=False)
    want = plain.apply(plain.init(key, x, mask, cond, ctx, False), x, mask, cond, ctx, False)
    for zero_init in (True, False):
        norm = pdnorm(zero_init=zero_init)
        got = norm.apply(norm.init(key, x, mask, cond, ctx, False), x, mask, cond, ctx, False)
        assert np.allclose(got, want) == zero_init
    for adapter in (PromptAdd(zero_init=True), PromptCrossAttention(zero_init=True, tokens=3)):
        got = adapter.apply(adapter.init(key, x, ctx), x, ctx)
        np.testing.assert_array_equal(got, x)


# ---------------------------------------------------------------- heads and loss

def test_heads_shapes_masks_and_union_columns():
    rng = np.random.default_rng(4)
    feat = rng.normal(size=(3, 7, 12)).astype(np.float32)
    cond = np.array([2, 0, 1])                       # Structured3D, ScanNet, S3DIS in one batch
    mask = heads.class_mask(DATASETS)
    assert mask.shape == (3, 25) and mask.sum(1).tolist() == [20, 13, 25]
    text = unit_rows(rng, 36, 10)
    all_heads = (heads.DecoupledHead(DATASETS), heads.UnionHead(DATASETS, "intended"),
                 heads.LanguageHead(DATASETS, text, "intended", 100.0), heads.UnionHead(DATASETS, "code_faithful"))

    @jax.jit                                         # one compilation for all heads
    def run(key, feat, cond):
        out = []
        for head in all_heads[:3]:
            v = head.init(key, feat, cond)
            out.append((v, head.apply(v, feat, cond)))
        return out, all_heads[3].apply(out[1][0], feat, cond)

    out, faithful = run(jax.random.PRNGKey(0), feat, cond)
    for _, logits in out:
        assert logits.shape == (3, 7, 25) and logits.dtype == jnp.float32
        for b, d in enumerate(cond):
            assert np.all(logits[b][:, ~mask[d]] == heads.MASKED)
            assert np.all(np.abs(logits[b][:, mask[d]]) < 1e3)
    # The union head shows each sample exactly its dataset's union columns, in label order.
    union_vars = out[1][0]
    full = feat @ union_vars["params"]["kernel"] + union_vars["params"]["bias"]
    for order, logits in (("intended", out[1][1]), ("code_faithful", faithful)):
        s3 = list(labels.valid_index("S3DIS", order))
        np.testing.assert_allclose(logits[2][:, :13], full[2][:, s3], rtol=1e-5, atol=1e-5)
    assert labels.valid_index("S3DIS")[0] == labels.UNION_NAMES.index("ceiling")


def test_language_loss_hand_computed():
    """Tiny case in float64 numpy: Dense -> L2 norm -> 100 x cosine vs the S3DIS text rows -> CE."""
    rng = np.random.default_rng(5)
    feat = rng.normal(size=(1, 4, 3)).astype(np.float32)
    segment = np.array([[0, 12, -1, 5]])            # ceiling, clutter, ignored, window
    text = unit_rows(rng, 36, 4)
    cond = np.array([1])                             # S3DIS
    head = heads.LanguageHead(DATASETS, text, "intended", 100.0)
    v = head.init(jax.random.PRNGKey(0), feat, cond)
    loss = heads.segmentation_loss(head.apply(v, feat, cond), segment)
    w, b = (np.asarray(v["params"]["proj_head"][k], np.float64) for k in ("kernel", "bias"))
    z = feat[0].astype(np.float64) @ w + b
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    rows = [labels.UNION_NAMES.index(n) for n in labels.CLASS_NAMES["S3DIS"]]   # intended order
    logits = 100.0 * z @ text[rows].astype(np.float64).T                           # (4, 13)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    want = -np.mean([logp[i, segment[0, i]] for i in (0, 1, 3)])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert heads.segmentation_loss(jnp.zeros((1, 2, 3)), np.full((1, 2), -1)) == 0.0


def test_relu_matches_jax_relu_with_gradients():
    """spunet.relu keeps only its output for the backward pass; values and gradients equal jax.nn.relu's,
    also at exactly 0."""
    x = jnp.asarray(np.r_[np.random.default_rng(0).normal(size=61), 0.0, -0.0, 0.0].astype(np.float32))
    g = jnp.asarray(np.random.default_rng(1).normal(size=64).astype(np.float32))
    np.testing.assert_array_equal(spunet.relu(x), jax.nn.relu(x))
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(spunet.relu(v) * g))(x),
                                  jax.grad(lambda v: jnp.sum(jax.nn.relu(v) * g))(x))


def test_language_head_matches_the_direct_formula():
    """The head computes logits in the feature width (no (N, 512) projection): values against the direct
    formula Dense -> L2 norm -> 100 x cosine in float64 numpy, gradients against autodiff of it."""
    rng = np.random.default_rng(3)
    feat = rng.normal(size=(2, 64, 16)).astype(np.float32)
    cond = np.array([0, 2])
    text = unit_rows(rng, 36, 40)
    head = heads.LanguageHead(DATASETS, text, "intended", 100.0)
    v = head.init(jax.random.PRNGKey(1), feat, cond)
    w, b = (np.asarray(v["params"]["proj_head"][k], np.float64) for k in ("kernel", "bias"))
    rows = heads.union_rows(DATASETS)
    for i, c in enumerate(cond):
        z = feat[i].astype(np.float64) @ w + b
        want = 100.0 * (z / np.linalg.norm(z, axis=1, keepdims=True)) @ text[rows[c]].astype(np.float64).T
        got = np.asarray(head.apply(v, feat, cond))[i]
        k = labels.num_classes(DATASETS[c])
        np.testing.assert_allclose(got[:, :k], want[:, :k], rtol=1e-4, atol=1e-4)

    def direct(params, x):
        z = x @ params["proj_head"]["kernel"] + params["proj_head"]["bias"]
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        t = jnp.asarray(text)[jnp.asarray(rows)][cond]
        return 100.0 * jnp.einsum("bnd,bkd->bnk", z, t)

    probe = rng.normal(size=(2, 64, rows.shape[1])).astype(np.float32) * heads.class_mask(DATASETS)[cond][:, None]
    loss = lambda fn: lambda p, x: jnp.sum(jnp.where(probe != 0, fn(p, x), 0) * probe)
    mine = jax.grad(loss(lambda p, x: head.apply({"params": p}, x, cond)), argnums=(0, 1))(v["params"], feat)
    ref = jax.grad(loss(direct), argnums=(0, 1))(v["params"], feat)
    for a, r in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=2e-3, atol=2e-3 * float(np.abs(r).max()))


# ---------------------------------------------------------------- the whole model

def test_forward_backward_padded_mixed_batch(train_step):
    loss, logits, upd, grads = train_step
    assert logits.shape == (2, 48, 25) and np.isfinite(loss)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert all(np.all(np.isfinite(g)) for _, g in leaves)
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(g)]
    assert not dead, dead                            # every parameter influences the loss
    # Only the conditions present (0 and 2) moved their running statistics.
    stats = upd["batch_stats"]["backbone"]["conv_input"]["bn"]["mean"]
    assert np.any(stats[0]) and np.any(stats[2]) and not np.any(stats[1])


def test_padding_does_not_change_real_sites(small_batch, train_step):
    """Same scenes with more padding (and larger level capacities): identical logits at real sites
    in train mode, where batch statistics must exclude the padding (eval mode normalises per row)."""
    model, v, (coords, mask, feat, h, cond) = small_batch
    pad = lambda a: np.concatenate([a, np.zeros((2, 24, *a.shape[2:]), a.dtype)], axis=1)
    a = train_step[1]
    b = train_apply(model)(v, pad(feat), build(pad(coords), pad(mask), 72), cond)[0]
    np.testing.assert_allclose(np.asarray(b)[:, :48][mask], a[mask], rtol=2e-4, atol=2e-4)


def test_adapters_heads_and_prompt_group(small_batch):
    _, _, (coords, mask, feat, h, cond) = small_batch
    for adapter, head in (("add", "decoupled"), ("cross_attention", "unionized"),
                          ("none", "unionized")):
        model = small_ppt(adapter=adapter, head=head)
        v = jax.eval_shape(model.init, jax.random.PRNGKey(0), feat, h, cond)
        assert jax.eval_shape(model.apply, v, feat, h, cond).shape == (2, 48, 25)
        paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_leaves_with_path(v["params"])]
        selected = [p for p, s in zip(paths, jax.tree_util.tree_leaves(
            models.prompt_param_mask(v["params"]))) if s]
        assert not any("modulation" in p for p in paths)          # prompts enter via the adapter
        if adapter == "none":
            assert not selected and v["batch_stats"]["backbone"]["conv_input"]["bn"]["mean"].shape[0] == 1
        else:
            assert "['prompt_table']" in selected
            assert len([p for p in selected if "prompt_" + adapter.split("_")[-1] in p]) >= 9 * 2
    for model, match in ((small_ppt(adapter="film"), "model.adapter"),
                         (small_ppt(head="knn"), "model.head"),
                         (models.PPT(DATASETS, **SMALL), "text table")):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(model.init, jax.random.PRNGKey(0), feat, h, cond)


def test_bfloat16_compute_keeps_float32_params_and_stats(small_batch, train_step):
    model, v, (coords, mask, feat, h, cond) = small_batch
    bf16 = small_ppt(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), feat, h, cond)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    a = train_step[1]
    b, upd = train_apply(bf16)(v, feat, h, cond)
    assert b.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(upd))
    real = np.asarray(a)[mask][:, :20]
    err = np.abs(np.asarray(b)[mask][:, :20] - real).max()
    assert err < 0.1 * np.abs(real).max(), err


def test_init_matches_reference(small_batch):
    """docs/reference.md §14: subm convs and Linear trunc_normal(0.02), strided/inverse U(+-1/sqrt(8 C_in)),
    BN 1/0, prompts N(0,1), proj_head PyTorch default U(+-1/sqrt(F)); checked per module (a whole
    model init compiles ~60 random ops, too slow for this suite)."""
    model, _, (coords, mask, feat, h, cond) = small_batch
    key = jax.random.PRNGKey(0)
    x = np.ones((2, 48, 32), np.float32)
    conv = lambda kind, k=3: jax.jit(spunet.conv(32, kind, 0, k, jnp.float32, None).init)(
        key, x, h)["params"]["kernel"]
    subm = np.asarray(conv("subm"))
    assert abs(subm.std() - 0.02) < 0.001 and abs(subm.mean()) < 0.001
    for kind in ("down", "up"):
        w = np.asarray(conv(kind))
        bound = 1 / np.sqrt(8 * 32)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    ctx = np.ones((2, 256), np.float32)
    v = jax.jit(pdnorm().init, static_argnums=5)(key, x, mask, cond, ctx, False)
    assert np.all(v["params"]["scale"] == 1) and np.all(v["params"]["bias"] == 0)
    mod = v["params"]["modulation"]
    assert abs(np.std(mod["kernel"]) - 0.02) < 0.001 and np.all(mod["bias"] == 0)
    assert np.all(v["batch_stats"]["var"] == 1) and np.all(v["batch_stats"]["mean"] == 0)
    big = models.PPT(DATASETS, context_channels=4096, text_table=np.eye(36, 8))
    table = big.init(key, method=lambda m: m.prompt_table)["params"]["prompt_table"]
    assert table.shape == (3, 4096) and abs(np.std(table) - 1) < 0.03
    head = heads.LanguageHead(DATASETS, unit_rows(np.random.default_rng(0), 36, 512), "intended", 100.0)
    proj = jax.jit(head.init)(key, x, cond)["params"]["proj_head"]
    for w in (proj["kernel"], proj["bias"]):
        assert np.abs(w).max() <= 1 / np.sqrt(32) and np.abs(w).max() > 0.95 / np.sqrt(32)


def test_full_size_parameter_count():
    """The reference's counts (docs/reference.md §14): PPT-v1m1 43,648,704; SpUNet-v1m3 backbone 43,598,272."""
    model = models.PPT(DATASETS, text_table=np.eye(36, 512, dtype=np.float32))
    n = 64
    shapes = (jax.ShapeDtypeStruct((1, n, 6), jnp.float32),
              jax.ShapeDtypeStruct((1, n, 3), jnp.int32), jax.ShapeDtypeStruct((1, n), bool))

    def init(feat, coords, mask):
        return model.init(jax.random.PRNGKey(0), feat, build(coords, mask, n), jnp.zeros(1, jnp.int32))

    v = jax.eval_shape(init, *shapes)
    total, backbone = models.count_params(v["params"]), models.count_params(v["params"]["backbone"])
    prompt = sum(x.size for x, sel in zip(jax.tree_util.tree_leaves(v["params"]),
                                          jax.tree_util.tree_leaves(models.prompt_param_mask(v["params"])))
                 if sel)
    print(f"\nPPT trainable parameters: {total:,} (backbone {backbone:,}; prompt group {prompt:,})")
    assert total == 43_648_704 and backbone == 43_598_272
    assert prompt == 4_408_064 + 3 * 256              # 59 modulation Dense layers + prompt table


@pytest.mark.parametrize("group_size", [0, 2])
def test_normalize_vjp_equals_autodiff_of_the_direct_formula(group_size):
    """The closed-form BatchNorm backward of `norm.normalize` (values and gradients in x, per-row scale
    and shift) against autodiff through a direct two-pass masked mean/variance, looped per (statistics
    group, condition); padding rows hold junk, the output is 0 there."""
    rng = np.random.default_rng(9)
    b, n, c = 4, 30, 5
    x = rng.normal(size=(b, n, c)).astype(np.float32) * 3 + 1
    mask = rng.random((b, n)) < 0.7
    x[~mask] = 1e3                                    # junk at padding must not matter
    cond = np.array([0, 2, 2, 2])
    onehot = jax.nn.one_hot(cond, 3, dtype=jnp.float32)
    scale = rng.normal(size=(b, c)).astype(np.float32)
    shift = rng.normal(size=(b, c)).astype(np.float32)
    ct = rng.normal(size=(b, n, c)).astype(np.float32)

    def direct(x, scale, shift):
        out = jnp.zeros_like(x)
        g = group_size or b
        for start in range(0, b, g):
            for d in np.unique(cond):
                rows = np.array([r for r in range(start, start + g) if cond[r] == d])
                if not len(rows):
                    continue
                m = jnp.asarray(mask[rows], jnp.float32)[..., None]
                cnt = m.sum()
                mean = (x[rows] * m).sum((0, 1)) / cnt
                var = (jnp.square(x[rows] - mean) * m).sum((0, 1)) / cnt
                xhat = (x[rows] - mean) * jax.lax.rsqrt(var + 1e-3)
                out = out.at[rows].set(xhat * scale[rows][:, None] + shift[rows][:, None])
        return jnp.where(mask[..., None], out, 0)

    ours = lambda x, scale, shift: norm.normalize(x, mask, onehot, scale, shift, group_size, 1e-3, False)[0]
    np.testing.assert_allclose(ours(x, scale, shift), direct(x, scale, shift), rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * ct), (0, 1, 2))(x, scale, shift) for f in (ours, direct)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(grads[0][0])[~mask] == 0)


def test_normalize_of_an_input_zero_at_padding_is_the_masked_one():
    """`masked_input=True` (SpUNet: every norm reads a conv's output, zero at padding) skips the input mask:
    on an input that is zero at padding it gives the same outputs, statistics and gradients as masking it."""
    rng = np.random.default_rng(3)
    b, n, c = 3, 20, 4
    mask = rng.random((b, n)) < 0.6
    x = np.where(mask[..., None], rng.normal(size=(b, n, c)) * 2 + 1, 0).astype(np.float32)
    onehot = jax.nn.one_hot(np.array([0, 1, 1]), 3, dtype=jnp.float32)
    scale, shift = (rng.normal(size=(b, c)).astype(np.float32) for _ in range(2))
    ct = rng.normal(size=(b, n, c)).astype(np.float32)
    runs = []
    for masked_input in (False, True):
        f = lambda x, s, t, mi=masked_input: norm.normalize(x, mask, onehot, s, t, 0, 1e-3, mi)
        (y, pooled), vjp = jax.vjp(f, x, scale, shift)
        runs.append((y, pooled, vjp((jnp.asarray(ct), jax.tree_util.tree_map(jnp.zeros_like, pooled)))))
    for got, want in zip(jax.tree_util.tree_leaves(runs[1]), jax.tree_util.tree_leaves(runs[0])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
