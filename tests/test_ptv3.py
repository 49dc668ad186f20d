"""PTv3 pieces: patch padding/unpadding, attention masking, pooling/unpooling against the hierarchy,
one compile and determinism of a train-mode forward."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppt_jax import models, sparse
from ppt_jax.models import ptv3
from ppt_jax.train.step import build_hierarchies

layout_of = jax.jit(ptv3.patch_layout, static_argnums=2)
build = jax.jit(sparse.build_hierarchy, static_argnums=2)


def test_patch_layout_hand_computed():
    """10 slots, 7 real sites, patches of 3: the partial last patch is refilled with the two sites
    before it (it holds the last 3 sites), the empty 4th patch reads the zero row 10."""
    perm = np.array([4, 0, 8, 2, 9, 1, 6, 3, 5, 7], np.int32)   # real sites first
    index, kv_len, position = layout_of(jnp.asarray(perm), 7, 3)
    np.testing.assert_array_equal(index, [[4, 0, 8], [2, 9, 1], [6, 9, 1], [10, 10, 10]])
    np.testing.assert_array_equal(kv_len, [3, 3, 3, 3])
    np.testing.assert_array_equal(np.asarray(index).reshape(-1)[np.asarray(position)[perm[:7]]], perm[:7])
    # Fewer real sites than a patch: one shorter patch (the flash-attention path's varlen patch).
    index, kv_len, _ = layout_of(jnp.asarray(perm[:4]), 2, 3)
    np.testing.assert_array_equal(index, [[4, 0, 4], [4, 4, 4]])
    np.testing.assert_array_equal(kv_len, [2, 3])


@pytest.mark.parametrize("n", [0, 1, 5, 12, 13, 31])
def test_patch_layout_round_trip(n):
    """Every real site sits in exactly one slot that maps back to it; keys of a patch are real sites."""
    rng = np.random.default_rng(n)
    num, k = 32, 6
    real = rng.permutation(num)[:n]
    perm = np.concatenate([real, np.setdiff1d(np.arange(num), real)]).astype(np.int32)
    index, kv_len, position = map(np.asarray, layout_of(jnp.asarray(perm), n, k))
    flat = index.reshape(-1)
    np.testing.assert_array_equal(flat[position[real]], real)
    for j in range(index.shape[0]):
        keys = index[j, :kv_len[j]]
        if j * k < n:
            assert set(keys) <= set(real) and len(set(keys)) == min(k, n)
        assert np.all(index[j, kv_len[j]:] == num)


def _attention(x, n_heads, k, mask, attention="auto", dtype=jnp.float32, chunk=0):
    """SerializedAttention on one batch row of sites in index order (the z order of a line)."""
    n = int(mask.sum())
    perm = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)]).astype(np.int32)
    layout = tuple(a[None] for a in layout_of(jnp.asarray(perm), n, k))
    module = ptv3.SerializedAttention(x.shape[-1], n_heads, attention, dtype, chunk)
    variables = jax.jit(module.init)(jax.random.key(0), x[None], layout)
    return jax.jit(module.apply)(variables, x[None], layout)[0], variables["params"]


def test_attention_ignores_padding_and_is_dense_attention_within_one_patch():
    rng = np.random.default_rng(0)
    num, c, heads = 12, 8, 2
    mask = np.zeros(num, bool)
    mask[[0, 2, 3, 5, 7, 8, 11]] = True
    x = rng.normal(size=(num, c)).astype(np.float32)
    out, params = _attention(x, heads, 16, mask)
    noisy = np.where(mask[:, None], x, 1e3 * rng.normal(size=x.shape)).astype(np.float32)
    out_noisy, _ = _attention(noisy, heads, 16, mask)
    np.testing.assert_array_equal(np.asarray(out)[mask], np.asarray(out_noisy)[mask])

    # float64 numpy multi-head attention over the 7 real sites (all in one patch).
    f64 = lambda a: np.asarray(a, np.float64)
    qkv = f64(x[mask]) @ f64(params["qkv"]["kernel"]) + f64(params["qkv"]["bias"])
    q, kk, v = np.split(qkv.reshape(-1, 3, heads, c // heads), 3, axis=1)
    q, kk, v = q[:, 0], kk[:, 0], v[:, 0]
    logits = np.einsum("thd,shd->hts", q, kk) / np.sqrt(c // heads)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", att, v).reshape(-1, c)
    expected = o @ f64(params["proj"]["kernel"]) + f64(params["proj"]["bias"])
    np.testing.assert_allclose(np.asarray(out)[mask], expected, rtol=1e-5, atol=1e-5)


def test_attention_in_chunks_of_patches_is_the_same_attention():
    """model.ptv3.attention_chunk: 6 patches of 4 sites in chunks of 4 (a filled tail chunk), 5 (the
    same) and 6 (one call); the short patches are the refilled and the empty ones."""
    rng = np.random.default_rng(3)
    mask = rng.random(24) < 0.8
    x = rng.normal(size=(24, 8)).astype(np.float32)
    full = np.asarray(_attention(x, 2, 4, mask)[0])
    for chunk in (4, 5, 6):
        out = np.asarray(_attention(x, 2, 4, mask, chunk=chunk)[0])
        np.testing.assert_allclose(out[mask], full[mask], rtol=1e-6, atol=1e-6, err_msg=f"chunk {chunk}")


def test_attention_implementation_per_platform():
    """model.ptv3.attention="auto" takes cuDNN's flash attention only where it runs (an NVIDIA GPU of
    compute capability >= 8, half precision, head width a multiple of 8 up to 128), XLA elsewhere;
    an explicit "cudnn" that cannot run is refused with the reason. The GPU/TPU devices are stand-ins:
    no accelerator runs these tests."""
    choose = ptv3.attention_implementation
    bf16, f16, f32 = jnp.bfloat16, jnp.float16, jnp.float32
    assert choose("auto", bf16, 16, "cuda") == choose("auto", f16, 128, "cuda") == "cudnn"
    for args in [(f32, 16, "cuda"), (bf16, 12, "cuda"), (bf16, 256, "cuda"), (bf16, 16, "gpu"),
                 (bf16, 16, "tpu"), (bf16, 16, "cpu"), (f32, 16, "cpu")]:
        assert choose("auto", *args) == "xla", args
        assert choose("xla", *args) == "xla"
        with pytest.raises(ValueError, match="model.ptv3.attention='cudnn' needs an NVIDIA GPU"):
            choose("cudnn", *args)
    assert choose("cudnn", bf16, 16, "cuda") == "cudnn"

    device = lambda kind, version, capability: types.SimpleNamespace(
        platform="gpu", device_kind=kind, client=types.SimpleNamespace(platform_version=version),
        compute_capability=capability)
    assert ptv3.attention_platform(device("NVIDIA H200", "PJRT C API\ncuda 12080", "9.0")) == "cuda"
    assert ptv3.attention_platform(device("NVIDIA A100-SXM4-40GB", "cuda 12080", "8.0")) == "cuda"
    assert ptv3.attention_platform(device("Tesla V100-SXM2-16GB", "cuda 12080", "7.0")) == "gpu"
    assert ptv3.attention_platform(device("AMD Instinct MI300X", "rocm 60300", "9.4")) == "gpu"
    assert ptv3.attention_platform(types.SimpleNamespace(platform="tpu")) == "tpu"
    assert ptv3.attention_platform() == jax.devices()[0].platform == "cpu"
    with pytest.raises(ValueError, match="model.ptv3.attention must be one of"):
        ptv3.PTv3(2, decouple=True, bn_momentum=0.99, bn_epsilon=1e-3, bn_group_size=0, dtype=jnp.float32,
                  enc_depths=(1,), enc_channels=(8,), enc_heads=(2,), enc_patch_size=(4,), dec_depths=(),
                  dec_channels=(), dec_heads=(), dec_patch_size=(), attention="flash")._check(
                      types.SimpleNamespace(masks=(0,)))


def test_attention_auto_on_cpu_is_the_xla_path():
    rng = np.random.default_rng(1)
    mask = rng.random(12) < 0.7
    x = rng.normal(size=(12, 8)).astype(np.float32)
    np.testing.assert_array_equal(_attention(x, 2, 4, mask)[0], _attention(x, 2, 4, mask, "xla")[0])
    with pytest.raises(ValueError, match="platform 'cpu', dtype float32, head width 4"):
        _attention(x, 2, 4, mask, "cudnn")


def test_xla_attention_is_jax_dot_product_attention_with_sequence_lengths():
    """ptv3._xla_attention (the XLA path) computes what jax.nn.dot_product_attention does with
    key_value_seq_lengths (the call of the cuDNN path, run here through its XLA implementation): full,
    short and one-key patches, float32 and bfloat16 inputs."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.normal(size=(4, 8, 2, 4)).astype(np.float32) for _ in range(3))
    kv_len = np.array([8, 5, 1, 8], np.int32)
    for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)):
        q_, k_, v_ = (jnp.asarray(a, dtype) for a in (q, k, v))
        ours = jax.jit(ptv3._xla_attention)(q_, k_, v_, kv_len)
        theirs = jax.jit(lambda *a: jax.nn.dot_product_attention(*a[:3], key_value_seq_lengths=a[3],
                                                                 implementation="xla"))(q_, k_, v_, kv_len)
        assert ours.dtype == dtype
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32), rtol=tol,
                                   atol=tol, err_msg=str(dtype))


def test_bfloat16_attention_is_the_float32_one_to_bfloat16_precision():
    """model.dtype bfloat16: projections and attention in bfloat16 (float32 parameters), same result to
    bfloat16's ~3 significant digits."""
    rng = np.random.default_rng(2)
    mask = rng.random(12) < 0.7
    x = rng.normal(size=(12, 8)).astype(np.float32)
    full, params = _attention(x, 2, 4, mask)
    half, half_params = _attention(x, 2, 4, mask, dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16 and half_params["qkv"]["kernel"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half, np.float32)[mask], np.asarray(full)[mask], rtol=0.05, atol=0.05)


def _hierarchy(seed=0, n=120, cap=128):
    rng = np.random.default_rng(seed)
    coords = np.unique(rng.integers(0, 9, (2 * n, 3)), axis=0)[:n].astype(np.int32)
    grid = np.zeros((cap, 3), np.int32)
    mask = np.zeros(cap, bool)
    slots = np.sort(rng.choice(cap, n, replace=False))
    grid[slots], mask[slots] = coords, True
    h = build(jnp.asarray(grid), jnp.asarray(mask), sparse.HierarchySpec((cap, 96)))
    return h, grid, mask


def test_pooling_max_and_unpooling_parent_match_coordinates():
    """Coarse sites by brute force over coordinates: max over the sites p with floor(p / 2) = q, and
    each fine site reads its parent's row."""
    h, grid, mask = _hierarchy()
    z = np.random.default_rng(1).normal(size=(grid.shape[0], 5)).astype(np.float32)
    pooled = np.asarray(jax.jit(ptv3._children_max)(jnp.asarray(z), h.children[0]))
    coarse = np.asarray(h.coords[1])
    cmask = np.asarray(h.masks[1])
    parents = {tuple(p): q for q, p in enumerate(coarse) if cmask[q]}
    assert len(parents) == len({tuple(p // 2) for p in grid[mask]})
    for q, p in enumerate(coarse[cmask]):
        kids = mask & np.all(grid // 2 == p, axis=1)
        np.testing.assert_array_equal(pooled[q], z[kids].max(0))
    up = np.asarray(jax.jit(ptv3._parent_rows)(jnp.asarray(pooled), h.parent_slot[0]))
    for i in np.flatnonzero(mask):
        np.testing.assert_array_equal(up[i], pooled[parents[tuple(grid[i] // 2)]])


TINY = (("enc_depths", (1, 1)), ("enc_channels", (8, 8)), ("enc_heads", (2, 2)), ("enc_patch_size", (16, 8)),
        ("dec_depths", (1,)), ("dec_channels", (8,)), ("dec_heads", (2,)), ("dec_patch_size", (16,)))


def test_train_forward_compiles_once_and_is_deterministic():
    """Order shuffling and DropPath draw from the 'dropout' stream: same key, same bits; another key,
    other numbers; new values of the same shapes reuse the compiled step."""
    model = models.PPT(conditions=("ScanNet", "S3DIS"), arch="ptv3", ptv3=TINY + (("drop_path", 0.5),),
                       norm_adaptive=False, head="decoupled")
    spec = sparse.HierarchySpec((128, 96))
    rng = np.random.default_rng(0)
    _, g0, m0 = _hierarchy(0)
    _, g1, m1 = _hierarchy(1)
    grid, mask = np.stack([g0, g1]), np.stack([m0, m1])
    cond = jnp.array([0, 1])

    @jax.jit
    def forward(feat, key, variables=None):
        h = build_hierarchies(grid, mask, spec)
        if variables is None:
            return model.init(key, feat, h, cond, train=False)
        out, _ = model.apply(variables, feat, h, cond, train=True, mutable=["batch_stats"],
                             rngs={"dropout": key}, method=models.PPT.features)
        return out

    feat = (rng.normal(size=(2, 128, 6)) * mask[..., None]).astype(np.float32)
    variables = forward(feat, jax.random.key(0))
    a = forward(feat, jax.random.key(1), variables)
    b = forward(feat, jax.random.key(1), variables)
    c = forward(feat, jax.random.key(2), variables)
    forward(feat + 1.0, jax.random.key(1), variables)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert forward._cache_size() == 2          # init + train apply, nothing recompiled
    assert np.all(np.asarray(a)[~mask] == 0)


def test_remat_and_attention_chunks_give_the_same_gradients():
    """model.ptv3.remat recomputes and attention_chunk splits the same computation: the parameter
    gradients of a train-mode objective (DropPath and order shuffling on, two-block scanned stages,
    several patches per level) equal those without, to float32 round-off."""
    spec = sparse.HierarchySpec((128, 96))
    _, grid, mask = _hierarchy(0)
    grid, mask, cond = grid[None], mask[None], jnp.array([0])
    rng = np.random.default_rng(4)
    feat = (rng.normal(size=(1, 128, 6)) * mask[..., None]).astype(np.float32)
    probe = rng.normal(size=(1, 128, 8)).astype(np.float32)
    h = build(jnp.asarray(grid[0]), jnp.asarray(mask[0]), spec)
    h = jax.tree_util.tree_map(lambda a: a[None], h)
    deep = (("enc_depths", (2, 2)), ("enc_patch_size", (16, 16)), ("dec_depths", (2,)), ("drop_path", 0.5))
    model = lambda **settings: models.PPT(conditions=("ScanNet",), arch="ptv3", norm_adaptive=False,
                                          head="decoupled", ptv3=TINY + deep + tuple(settings.items()))
    variables = jax.jit(lambda: model().init(jax.random.key(0), feat, h, cond, train=False))()

    def grads(**settings):
        def objective(params):
            out, _ = model(**settings).apply(dict(variables, params=params), feat, h, cond, train=True,
                                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)},
                                             method=models.PPT.features)
            return jnp.sum(out * probe)
        return jax.jit(jax.grad(objective))(variables["params"])

    base = grads()
    scale = max(np.abs(g).max() for g in jax.tree_util.tree_leaves(base))   # biases before a BN: ~0 + round-off
    for settings in ({"remat": "attention"}, {"remat": "block", "attention_chunk": 3}):
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=str(settings))
        jax.tree_util.tree_map(close, grads(**settings), base)


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="model.ptv3.dec_depths"):
        ptv3.PTv3(2, decouple=True, bn_momentum=0.99, bn_epsilon=1e-3, bn_group_size=0, dtype=jnp.float32,
                  enc_depths=(1, 1), enc_channels=(8, 8), enc_heads=(2, 2), enc_patch_size=(4, 4),
                  dec_depths=(1, 1))._check(type("H", (), {"masks": (0, 0)})())
    h, _, _ = _hierarchy()
    init = lambda model: model.init(jax.random.key(0), jnp.zeros((1, 128, 6)),
                                    jax.tree_util.tree_map(lambda a: a[None], h), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="norm_adaptive=False"):
        init(models.PPT(conditions=("ScanNet",), arch="ptv3", head="decoupled"))
    for setting, message in ((("remat", "all"), "model.ptv3.remat must be one of"),
                             (("attention_chunk", -1), "model.ptv3.attention_chunk must be >= 0")):
        with pytest.raises(ValueError, match=message):
            init(models.PPT(conditions=("ScanNet",), arch="ptv3", head="decoupled", norm_adaptive=False,
                            ptv3=TINY + (setting,)))
    with pytest.raises(ValueError, match="model.ptv3.bn_momentum is not a PTv3 setting"):
        init(models.PPT(conditions=("ScanNet",), arch="ptv3", head="decoupled", norm_adaptive=False,
                        ptv3=(("bn_momentum", 0.9),)))
