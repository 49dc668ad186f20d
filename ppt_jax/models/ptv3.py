"""Point Transformer V3 (Pointcept's PT-v3m1) with PDNorm, on the sparse engine's hierarchy.

The reference's operations map onto `ppt_jax.sparse` (docs/ptv3.md has the full correspondence):
- its stride-2 serialized pooling (parents floor(p / 2), max over the children) is hierarchy level l -> l+1
  (`children`), its unpooling is `parent_slot`; the embedding's 5x5x5 and the blocks' 3x3x3 xCPE convs
  are `sparse.subm_conv`;
- each level's sites are ordered along the space-filling curves of `sparse.serialization` at depth
  d - l (d from the sample's finest coordinates), one order per block in turn (block i uses
  orders[i % len(orders)]); in training, `shuffle_orders` draws a new order of the orders per level;
- attention runs in patches of `patch_size` consecutive sites of that order (`_xla_attention`, or
  `jax.nn.dot_product_attention` for cuDNN's flash attention). As the reference's flash-attention
  path: a sample's last, partial patch is filled up with the sites just before it (so it holds the
  sample's last `patch_size` sites), a sample with fewer sites than `patch_size` is one shorter patch
  (a key length below `patch_size`), and padding sites are never keys.

Module names follow the reference's state-dict keys (embedding_*, enc{s}_down, dec{s}_up; inside blocks
cpe_conv/cpe_linear/cpe_norm, norm1, attn/qkv, attn/proj, norm2, mlp_fc1, mlp_fc2), so that `ptv3_import` is
a readable mapping. A stage's blocks run as one `nn.scan` (XLA compiles one block body per stage instead of
one per block: 9 instead of the recipe's 30), so they are one module, enc{s}_blocks / dec{s}_blocks, whose
leaves stack the reference's block{i} on a leading axis; every block parameter's path holds "block", so the
optimizer's keyword "block" selects the same parameters as the reference's `param_dicts=[dict(keyword="block", ...)]`.

Norms are PDNorm without prompt modulation (the reference's PPT recipe: pdnorm_bn, pdnorm_ln, decouple,
not adaptive): a BatchNorm (`norm.PDNorm`) and a LayerNorm (`ConditionLayerNorm`) per dataset.
Initialisation is PyTorch's and spconv's defaults (PT-v3m1 sets none of its own).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import flax.linen as nn
import numpy as np

from ppt_jax.models import inits
from ppt_jax.models.conv import SparseConv
from ppt_jax.models.norm import PDNorm
from ppt_jax.sparse import serialization

ATTENTION = ("auto", "xla", "cudnn")
REMAT = ("none", "attention", "block")
_SAVED_BY_BLOCK_REMAT = "ptv3_attention_output"      # remat="block" keeps it: no attention forward to redo
CPE_AFTER_UNPOOL = ("skip", "sum")


def _gelu(x):
    return nn.gelu(x, approximate=False)          # torch.nn.GELU()


def _dense(features, fan_in, name, dtype):
    init = inits.torch_linear(fan_in)
    return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype, name=name)


class ConditionLayerNorm(nn.Module):
    """LayerNorm over channels with one affine per dataset (decouple) or one shared; float32 inside."""
    num_conditions: int
    decouple: bool
    epsilon: float

    @nn.compact
    def __call__(self, x, condition):
        c = x.shape[-1]
        d = self.num_conditions if self.decouple else 1
        scale = self.param("scale", nn.initializers.ones, (d, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d, c), jnp.float32)
        cond = condition if self.decouple else jnp.zeros_like(condition)
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale[cond][:, None] + bias[cond][:, None]).astype(x.dtype)


def attention_platform(device=None):
    """"cuda" for an NVIDIA GPU that runs cuDNN's flash attention (compute capability >= 8.0), else the
    device's platform ("cpu", "tpu", "gpu" for other GPUs)."""
    device = device or jax.devices()[0]
    if device.platform != "gpu":
        return device.platform
    nvidia = "cuda" in getattr(device.client, "platform_version", "").lower() or \
        device.device_kind.lower().startswith("nvidia")
    capability = getattr(device, "compute_capability", "0")
    return "cuda" if nvidia and float(capability) >= 8.0 else "gpu"


def attention_implementation(choice, dtype, head_dim, platform):
    """The attention path for `model.ptv3.attention` (docs/ptv3.md): "xla" (`_xla_attention`) or "cudnn".

    "auto": cuDNN's flash attention where it runs (platform "cuda", bfloat16/float16, head width a
    multiple of 8 up to 128), else XLA (CPU, TPU, float32, other GPUs); "xla"/"cudnn" as asked,
    "cudnn" refused with the reason where it cannot run."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    cudnn = platform == "cuda" and half and head_dim % 8 == 0 and head_dim <= 128
    if choice == "auto":
        return "cudnn" if cudnn else "xla"
    if choice == "cudnn" and not cudnn:
        raise ValueError(f"model.ptv3.attention='cudnn' needs an NVIDIA GPU of compute capability >= 8.0, "
                         f"model.dtype bfloat16 or float16 and heads of a multiple of 8 up to 128 channels; "
                         f"here: platform {platform!r}, dtype {jnp.dtype(dtype).name}, head width {head_dim}")
    return choice


def patch_layout(perm, n, k):
    """Patches of one sample's sites in one curve order.

    perm (N,) int32 sites in curve order (the n real sites first), k static patch size <= N. Returns
    index (P, k) int32 (site of every patch slot; N = an all-zero row), kv_len (P,) int32 (valid keys per
    patch) and position (N,) int32 (each site's slot in the flattened (P * k) patches; real sites only).
    """
    num = perm.shape[0]
    p = -(-num // k)
    slot = jnp.arange(p * k, dtype=jnp.int32).reshape(p, k)
    start = slot[:, :1]
    # The reference pads a partial last patch with the k - n % k sites before it (when n > k).
    refill = (start < n) & (n > k)
    src = jnp.where(slot < n, slot, jnp.where(refill, slot - k, -1))
    index = jnp.where(src >= 0, perm[jnp.clip(src, 0, num - 1)], num)
    kv_len = jnp.where((jnp.arange(p) == 0) & (n < k) & (n > 0), n, k).astype(jnp.int32)
    return index.astype(jnp.int32), kv_len, serialization.inverse(perm)


def level_layouts(hierarchy, level, finest_depth, orders, k):
    """Batched layouts of every order at `level`: (index (O, B, P, k), kv_len (O, B, P), position (O, B, N))."""

    def one(coords, mask, d0):
        perms = serialization.orders(coords, mask, jnp.maximum(d0 - level, 0), orders)
        return jax.vmap(patch_layout, in_axes=(0, None, None))(perms, jnp.sum(mask, dtype=jnp.int32), k)

    index, kv_len, position = jax.vmap(one)(hierarchy.coords[level], hierarchy.masks[level], finest_depth)
    return tuple(jnp.moveaxis(a, 1, 0) for a in (index, kv_len, position))


def _xla_attention(q, key, v, kv_len):
    """softmax(q k^T / sqrt(D)) v of patches q, key, v (P, k, H, D), keys from kv_len (P,) on masked out;
    logits and softmax in float32. What `jax.nn.dot_product_attention(implementation="xla")` computes, with
    the mask broadcast from (P, 1, 1, k) instead of combined into a (P, H, k, k) array, which its backward
    pass then reads: 2.2x faster forward + backward on CPU (benchmarks/README.md). The query is scaled
    before the product, as the reference does."""
    logits = jnp.einsum("ptnh,psnh->pnts", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), key,
                        preferred_element_type=jnp.float32)
    valid = jnp.arange(key.shape[1]) < kv_len[:, None]
    logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min / 2)
    return jnp.einsum("pnts,psnh->ptnh", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def _attend(q, key, v, kv_len, implementation, chunk):
    """Attention of patches q, key, v (P, k, H, D), kv_len (P,): `_xla_attention` or
    `jax.nn.dot_product_attention` (cuDNN), `chunk` patches per call in a loop (0 or P <= chunk: one
    call); the tail chunk is filled with one-key patches, dropped. A chunk's logits are recomputed in
    the backward pass (jax.checkpoint), so that the loop's backward does not keep every chunk's: one
    chunk's exist at a time in either pass."""
    call = (lambda a: _xla_attention(*a)) if implementation == "xla" else (
        lambda a: jax.nn.dot_product_attention(*a[:3], key_value_seq_lengths=a[3], implementation=implementation))
    num = q.shape[0]
    if not chunk or num <= chunk:
        return call((q, key, v, kv_len))
    fill = -num % chunk
    pad = lambda a, value=0: jnp.pad(a, [(0, fill)] + [(0, 0)] * (a.ndim - 1), constant_values=value)
    parts = tuple(a.reshape((-1, chunk) + a.shape[1:]) for a in (pad(q), pad(key), pad(v), pad(kv_len, 1)))
    out = jax.lax.map(jax.checkpoint(call, prevent_cse=False), parts)
    return out.reshape((-1,) + out.shape[2:])[:num]


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside the patches of one order: x (B, N, C) -> (B, N, C).
    chunk: patches per attention call (PTv3.attention_chunk)."""
    channels: int
    num_heads: int
    attention: str
    dtype: Any
    chunk: int = 0

    @nn.compact
    def __call__(self, x, layout):
        index, kv_len, position = layout
        b, n, c = x.shape
        p, k = index.shape[1:]
        h = self.num_heads
        qkv = _dense(3 * c, c, "qkv", self.dtype)(x)
        qkv = jnp.concatenate([qkv, jnp.zeros((b, 1, 3 * c), qkv.dtype)], axis=1)
        tokens = jnp.take_along_axis(qkv, index.reshape(b, p * k, 1), axis=1)
        q, key, v = jnp.moveaxis(tokens.reshape(b * p, k, 3, h, c // h), 2, 0)
        implementation = attention_implementation(self.attention, q.dtype, c // h, attention_platform())
        out = _attend(q, key, v, kv_len.reshape(-1), implementation, self.chunk)
        out = jnp.take_along_axis(out.reshape(b, p * k, c), position[..., None], axis=1)
        return _dense(c, c, "proj", self.dtype)(out)


class Block(nn.Module):
    """xCPE (subm conv + linear + LN, residual) -> pre-LN attention -> pre-LN MLP, DropPath on both.

    The body of a `jax.lax.scan` over a stage's blocks (`nn.scan`, parameters stacked on a leading
    axis): x (B, N, C) is the carry, `step` this block's slice of the stage's per-block inputs
    (layout, DropPath rate, from_skip), hierarchy, condition and skip are the same for every block.
    from_skip: the xCPE conv reads `skip` instead of x (see PTv3.cpe_after_unpool; skip None: never).
    drop_path: whether any block of the stage drops (a rate of 0 keeps every point exactly)."""
    channels: int
    num_heads: int
    level: int
    num_conditions: int
    decouple: bool
    mlp_ratio: float
    drop_path: bool
    ln_epsilon: float
    attention: str
    attention_chunk: int
    remat_attention: bool
    dtype: Any
    train: bool

    def _drop_path(self, y, rate):
        """timm DropPath on the reference's (points, C) features: drops whole points' residuals."""
        if not (self.train and self.drop_path):
            return y
        keep = 1.0 - rate
        draw = jax.random.bernoulli(self.make_rng("dropout"), keep, y.shape[:-1] + (1,))
        return y * (draw.astype(y.dtype) / keep).astype(y.dtype)

    @nn.compact
    def __call__(self, x, step, hierarchy, condition, skip):
        layout, rate, from_skip = step
        c, dt = self.channels, self.dtype
        ln = lambda name: ConditionLayerNorm(self.num_conditions, self.decouple, self.ln_epsilon, name=name)
        y = SparseConv(c, "subm", self.level, 3, True, dtype=dt, name="cpe_conv")(
            x if skip is None else jnp.where(from_skip, skip, x), hierarchy)
        y = _dense(c, c, "cpe_linear", dt)(y)
        x = x + ln("cpe_norm")(y, condition).astype(x.dtype)
        attention = nn.remat(SerializedAttention) if self.remat_attention else SerializedAttention
        y = attention(c, self.num_heads, self.attention, dt, self.attention_chunk, name="attn")(
            ln("norm1")(x, condition), layout)
        y = checkpoint_name(y, _SAVED_BY_BLOCK_REMAT)
        x = x + self._drop_path(y, rate).astype(x.dtype)
        hidden = int(c * self.mlp_ratio)
        y = _gelu(_dense(hidden, c, "mlp_fc1", dt)(ln("norm2")(x, condition)))
        y = _dense(c, hidden, "mlp_fc2", dt)(y)
        x = x + self._drop_path(y, rate).astype(x.dtype)
        return jnp.where(hierarchy.masks[self.level][..., None], x, 0), None


def _children_max(z, children):
    """(N_l, C), (N_{l+1}, 8) -> (N_{l+1}, C): max over the existing children (missing = N_l)."""
    zp = jnp.concatenate([z, jnp.full((1, z.shape[1]), -jnp.inf, z.dtype)])
    return jnp.max(zp[children], axis=1)


def _parent_rows(z, parent_slot):
    """(N_{l+1}, C), (N_l,) -> (N_l, C): each site's parent row (0 where it has none: slot N_{l+1} * 8)."""
    zp = jnp.concatenate([z, jnp.zeros((1, z.shape[1]), z.dtype)])
    return zp[parent_slot // 8]


class Pooling(nn.Module):
    """Serialized pooling, stride 2: linear, max over children (level l -> l + 1), BN, GELU."""
    features: int
    level: int
    norm: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, hierarchy, condition, train):
        z = _dense(self.features, x.shape[-1], "proj", self.dtype)(x)
        mask = hierarchy.masks[self.level + 1]
        z = jax.vmap(_children_max)(z, hierarchy.children[self.level])
        z = jnp.where(mask[..., None], z, 0)
        return _gelu(self.norm(name="norm")(z, mask, condition, None, train))


class Unpooling(nn.Module):
    """Serialized unpooling: linear+BN+GELU of both the coarse and the skip features, coarse added at
    each fine site's parent (level l + 1 -> l). Returns (sum, projected skip)."""
    features: int
    level: int
    norm: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, skip, hierarchy, condition, train):
        coarse_mask, fine_mask = hierarchy.masks[self.level + 1], hierarchy.masks[self.level]
        z = _dense(self.features, x.shape[-1], "proj", self.dtype)(x)
        z = _gelu(self.norm(name="proj_norm")(z, coarse_mask, condition, None, train))
        s = _dense(self.features, skip.shape[-1], "proj_skip", self.dtype)(skip)
        s = _gelu(self.norm(name="proj_skip_norm")(s, fine_mask, condition, None, train))
        up = jax.vmap(_parent_rows)(z, hierarchy.parent_slot[self.level])
        return jnp.where(fine_mask[..., None], s + up.astype(s.dtype), 0), s


def _drop_path_rates(rate, depths):
    """torch.linspace(0, rate, sum(depths)) split per stage (the reference's stochastic depth)."""
    rates = np.linspace(0.0, rate, sum(depths)).tolist()
    bounds = np.cumsum((0,) + tuple(depths))
    return [rates[bounds[s]:bounds[s + 1]] for s in range(len(depths))]


class PTv3(nn.Module):
    """PT-v3m1: feat (B, N0, C_in), batched Hierarchy, condition (B,) -> (B, N0, dec_channels[0]) float32.

    Field defaults are the reference's PTv3 + PPT recipe (Pointcept `semseg-pt-v3m1-1-ppt-extreme`);
    stage s of the encoder runs at hierarchy level s, so the hierarchy needs len(enc_depths) levels.
    attention: "auto" (cuDNN flash attention on NVIDIA GPUs in bfloat16/float16, else XLA:
    `attention_implementation`), "xla" (`_xla_attention`) or "cudnn" (`jax.nn.dot_product_attention`).
    attention_chunk: patches per attention call, in a loop (0: all of a level's patches at once): the
    XLA path's (patches, heads, k, k) logits and probabilities (4 MiB per patch and head at k = 1024 in
    float32) then exist for that many patches at a time, in both passes (the backward pass recomputes
    each chunk's); same numbers.
    remat: what the backward pass recomputes instead of keeping from the forward (same numbers):
    "none"; "attention": each block's attention (its (patches, heads, k, k) probabilities are then
    never kept); "block": each whole block but its attention's output (only the blocks' inputs and
    attention outputs, (N, C) each, are kept; one more forward of the rest, and of the attention only
    where its backward needs it: with attention_chunk, each chunk's logits).
    cpe_after_unpool: what the xCPE conv of a decoder stage's first block reads. "skip" (the reference,
    whose unpooling updates the point features but not the sparse tensor the conv reads): the projected
    skip features only; "sum": the unpooled sum, as the fix proposed upstream (docs/ptv3.md).
    """
    num_conditions: int
    decouple: bool                    # these five: PPT's shared model fields (models.PPT holds their defaults)
    bn_momentum: float
    bn_epsilon: float
    bn_group_size: int
    dtype: Any
    orders: tuple = serialization.ORDERS
    enc_depths: tuple = (3, 3, 3, 6, 3)
    enc_channels: tuple = (48, 96, 192, 384, 512)
    enc_heads: tuple = (3, 6, 12, 24, 32)
    enc_patch_size: tuple = (1024, 1024, 1024, 1024, 1024)
    dec_depths: tuple = (3, 3, 3, 3)
    dec_channels: tuple = (64, 96, 192, 384)
    dec_heads: tuple = (4, 6, 12, 24)
    dec_patch_size: tuple = (1024, 1024, 1024, 1024)
    mlp_ratio: float = 4.0
    drop_path: float = 0.3
    shuffle_orders: bool = True
    ln_epsilon: float = 1e-5
    cpe_after_unpool: str = "skip"
    attention: str = "auto"
    attention_chunk: int = 0
    remat: str = "none"

    def _check(self, hierarchy):
        stages = len(self.enc_depths)
        for name in ("enc_channels", "enc_heads", "enc_patch_size"):
            if len(getattr(self, name)) != stages:
                raise ValueError(f"model.ptv3.{name} needs {stages} entries (one per encoder stage)")
        for name in ("dec_depths", "dec_channels", "dec_heads", "dec_patch_size"):
            if len(getattr(self, name)) != stages - 1:
                raise ValueError(f"model.ptv3.{name} needs {stages - 1} entries (one per decoder stage)")
        if len(hierarchy.masks) < stages:
            raise ValueError(f"PTv3 with {stages} stages needs a hierarchy of {stages} levels, got "
                             f"{len(hierarchy.masks)} (sparse.HierarchySpec.capacities)")
        if not self.orders or any(o not in serialization.ORDERS for o in self.orders):
            raise ValueError(f"model.ptv3.orders must be a non-empty subset of {serialization.ORDERS}, "
                             f"got {self.orders}")
        if self.cpe_after_unpool not in CPE_AFTER_UNPOOL:
            raise ValueError(f"model.ptv3.cpe_after_unpool must be one of {CPE_AFTER_UNPOOL}, "
                             f"got {self.cpe_after_unpool!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"model.ptv3.attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.remat not in REMAT:
            raise ValueError(f"model.ptv3.remat must be one of {REMAT}, got {self.remat!r}")
        if self.attention_chunk < 0:
            raise ValueError(f"model.ptv3.attention_chunk must be >= 0 (0: no chunks), got {self.attention_chunk}")
        for c, h in zip(self.enc_channels + self.dec_channels, self.enc_heads + self.dec_heads):
            if c % h:
                raise ValueError(f"model.ptv3: {c} channels do not split into {h} heads")

    def _order_schedule(self, train):
        """Per level, the position in `orders` of each block's order (a traced permutation when shuffled)."""
        count = len(self.orders)
        if not (train and self.shuffle_orders):
            return [jnp.arange(count)] * len(self.enc_depths)
        rng = self.make_rng("dropout")
        return [jax.random.permutation(key, count) for key in jax.random.split(rng, len(self.enc_depths))]

    @nn.compact
    def __call__(self, feat, hierarchy, condition, context, train: bool):
        del context                                   # PDNorm here is not adaptive (the reference's recipe)
        self._check(hierarchy)
        dt = self.dtype
        bn = functools.partial(PDNorm, self.num_conditions, self.decouple, adaptive=False, zero_init=False,
                               momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               group_size=self.bn_group_size, masked_input=False)
        finest = jax.vmap(serialization.depth)(hierarchy.coords[0], hierarchy.masks[0])
        schedule = self._order_schedule(train)
        layouts = {}

        def blocks(x, part, s, rates, skip=None):
            """The stage's blocks as one scan; block i attends in orders[schedule[s][i % len(orders)]]."""
            channels, heads, patch = (getattr(self, f"{part}_{f}")[s] for f in ("channels", "heads", "patch_size"))
            k = min(patch, hierarchy.masks[s].shape[-1])
            if (s, k) not in layouts:
                layouts[s, k] = level_layouts(hierarchy, s, finest, self.orders, k)
            which = schedule[s][np.arange(len(rates)) % len(self.orders)]
            from_skip = jnp.arange(len(rates)) == 0                 # the first block reads `skip`, if given
            step = (tuple(a[which] for a in layouts[s, k]), jnp.asarray(rates, jnp.float32), from_skip)
            body = Block if self.remat != "block" else nn.remat(
                Block, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names(_SAVED_BY_BLOCK_REMAT))
            scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                           in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=len(rates))
            x, _ = scan(channels, heads, s, self.num_conditions, self.decouple, self.mlp_ratio, max(rates) > 0,
                        self.ln_epsilon, self.attention, self.attention_chunk, self.remat == "attention", dt,
                        train, name=f"{part}{s}_blocks")(x, step, hierarchy, condition, skip)
            return x

        x = SparseConv(self.enc_channels[0], "subm", 0, 5, dtype=dt, name="embedding_conv")(feat, hierarchy)
        x = _gelu(bn(name="embedding_norm")(x, hierarchy.masks[0], condition, None, train))
        skips = []
        for s, rates in enumerate(_drop_path_rates(self.drop_path, self.enc_depths)):
            if s > 0:
                skips.append(x)
                x = Pooling(self.enc_channels[s], s - 1, bn, dt, name=f"enc{s}_down")(
                    x, hierarchy, condition, train)
            x = blocks(x, "enc", s, rates)
        for s, rates in reversed(list(enumerate(_drop_path_rates(self.drop_path, self.dec_depths)))):
            x, skip = Unpooling(self.dec_channels[s], s, bn, dt, name=f"dec{s}_up")(
                x, skips.pop(), hierarchy, condition, train)
            x = blocks(x, "dec", s, rates[::-1], skip if self.cpe_after_unpool == "skip" else None)
        return jnp.where(hierarchy.masks[0][..., None], x.astype(jnp.float32), 0.0)


def defaults():
    """{field: default} of every PTv3 setting (`config.model.ptv3`): the reference's PTv3 + PPT recipe.
    The fields without a default are PPT's shared model fields."""
    return {f.name: f.default for f in dataclasses.fields(PTv3)
            if f.default is not dataclasses.MISSING and f.name not in ("parent", "name")}
