"""SpUNet-v1m3 (docs/reference.md §3): the reference's sparse U-Net with a norm after every conv.

Module names mirror the reference's state-dict keys (conv_input, down_s, enc_s/block_i, up_s,
dec_s/block_i; conv/bn inside the conv-norm-ReLU units; conv1/bn1/conv2/bn2/proj_conv/proj_norm
inside BasicBlocks) so that `pointcept_import` is a readable key mapping.

Sparse convs are `conv.SparseConv` (the whole batch at once, float32 kernels cast to the compute
dtype); norms keep float32 statistics. Stage s of the encoder lives at hierarchy level s+1, decoder
stage s at level s; the stem and the output at level 0.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from ppt_jax.models import inits
from ppt_jax.models.adapters import PromptAdd, PromptCrossAttention
from ppt_jax.models.conv import SparseConv
from ppt_jax.models.norm import PDNorm

ADAPTERS = ("pdnorm", "add", "cross_attention", "none")


@jax.custom_vjp
def relu(x):
    """max(x, 0) whose backward pass keeps only the output (y > 0 <=> x > 0; gradient 0 at 0, as
    jax.nn.relu). The output is saved anyway, as the next conv's input; jax.nn.relu's rule keeps a
    full-size float mask besides, ~37 MB per 96-channel, 100k-site activation."""
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y, g):
    return (jnp.where(y > 0, g, 0),)


relu.defvjp(_relu_fwd, _relu_bwd)


def conv(features, kind, level, kernel_size, dtype, name):
    """The reference's init_weights: trunc_normal(0.02) on the SubMConv3d layers, spconv's default on
    the strided and inverse convs."""
    init = inits.trunc_normal(0.02) if kind == "subm" else None
    return SparseConv(features, kind, level, kernel_size, kernel_init=init, dtype=dtype, name=name)


class Unit(nn.Module):
    """Conv -> norm -> ReLU (the reference's stem, down and up units)."""
    features: int
    kind: str
    level: int
    norm: Any
    dtype: Any
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x, hierarchy, condition, context, train):
        x = conv(self.features, self.kind, self.level, self.kernel_size, self.dtype, "conv")(x, hierarchy)
        out_level = self.level + 1 if self.kind == "down" else self.level
        x = self.norm(name="bn")(x, hierarchy.masks[out_level], condition, context, train)
        return relu(x)


class BasicBlock(nn.Module):
    """Two subm 3x3x3 convs with norms + residual (1x1x1 conv + norm when the width changes)."""
    features: int
    level: int
    norm: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, hierarchy, condition, context, train):
        mask = hierarchy.masks[self.level]
        subm = lambda k, name: conv(self.features, "subm", self.level, k, self.dtype, name)
        h = subm(3, "conv1")(x, hierarchy)
        h = relu(self.norm(name="bn1")(h, mask, condition, context, train))
        h = subm(3, "conv2")(h, hierarchy)
        h = self.norm(name="bn2")(h, mask, condition, context, train)
        if x.shape[-1] != self.features:
            x = subm(1, "proj_conv")(x, hierarchy)
            x = self.norm(name="proj_norm")(x, mask, condition, context, train)
        return relu(h + x.astype(h.dtype))


class Stage(nn.Module):
    """`depth` BasicBlocks at one level (the reference's enc[s] / dec[s])."""
    features: int
    depth: int
    level: int
    norm: Any
    dtype: Any

    @nn.compact
    def __call__(self, x, hierarchy, condition, context, train):
        for i in range(self.depth):
            x = BasicBlock(self.features, self.level, self.norm, self.dtype,
                           name=f"block{i}")(x, hierarchy, condition, context, train)
        return x


class SpUNet(nn.Module):
    """SpUNet-v1m3: feat (B, N0, C_in) -> per-site features (B, N0, channels[-1]) float32.

    The fields are `models.PPT`'s, which holds their defaults (the reference's). channels/layers: 4
    encoder then 4 decoder stages. adapter: "pdnorm" (PDNorm, adaptive per `norm_adaptive`), "add" or
    "cross_attention" (PDNorm without modulation + a prompt adapter after every stage), "none"
    (one shared BatchNorm, no prompt: the naive joint-training baseline).
    """
    num_conditions: int
    channels: tuple
    layers: tuple
    base_channels: int
    adapter: str
    norm_decouple: bool
    norm_adaptive: bool
    zero_init: bool
    bn_momentum: float
    bn_epsilon: float
    bn_group_size: int
    attention_tokens: int
    dtype: Any

    def _norm(self):
        prompt_norm = self.adapter == "pdnorm" and self.norm_adaptive
        return functools.partial(
            PDNorm, num_conditions=self.num_conditions,
            decouple=self.norm_decouple and self.adapter != "none",
            adaptive=prompt_norm, zero_init=self.zero_init, momentum=self.bn_momentum,
            epsilon=self.bn_epsilon, group_size=self.bn_group_size, masked_input=True)   # conv outputs

    def _adapt(self, x, context, name):
        if self.adapter == "add":
            return PromptAdd(self.zero_init, name=f"prompt_add_{name}")(x, context)
        if self.adapter == "cross_attention":
            return PromptCrossAttention(self.zero_init, self.attention_tokens,
                                        name=f"prompt_attention_{name}")(x, context)
        return x

    @nn.compact
    def __call__(self, feat, hierarchy, condition, context: jax.Array | None, train: bool):
        if self.adapter not in ADAPTERS:
            raise ValueError(f"model.adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if len(self.channels) != 8 or len(self.layers) != 8:
            raise ValueError(f"model.channels and model.layers need 8 entries (4 encoder + 4 decoder "
                             f"stages), got {self.channels} and {self.layers}")
        norm, dt = self._norm(), self.dtype
        args = (hierarchy, condition, context, train)
        x = Unit(self.base_channels, "subm", 0, norm, dt, 5, name="conv_input")(feat, *args)
        x = self._adapt(x, context, "stem")
        skips = [x]
        for s in range(4):
            x = Unit(self.channels[s], "down", s, norm, dt, name=f"down_{s}")(x, *args)
            x = Stage(self.channels[s], self.layers[s], s + 1, norm, dt, name=f"enc_{s}")(x, *args)
            x = self._adapt(x, context, f"enc_{s}")
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(4)):
            width = self.channels[7 - s]
            x = Unit(width, "up", s, norm, dt, name=f"up_{s}")(x, *args)
            x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
            x = Stage(width, self.layers[7 - s], s, norm, dt, name=f"dec_{s}")(x, *args)
            x = self._adapt(x, context, f"dec_{s}")
        return jnp.where(hierarchy.masks[0][..., None], x.astype(jnp.float32), 0.0)
