"""Categorical-alignment heads and the segmentation loss (docs/reference.md §1, §4, §5).

Every head maps backbone features (B, N, F) to logits in each sample's own label space, padded to
K = max classes over the model's datasets (design.md §4); columns >= C_{condition[b]} hold MASKED.
The per-row choice is a gather of kernel columns / text rows by `condition`, so a batch may mix
datasets with static shapes.

- decoupled: one Dense(F -> C_d) per dataset (`seg_heads_<d>`);
- unionized: one Dense(F -> 36) over labels.UNION_NAMES (`union_head`); each sample sees only its
  own dataset's columns (labels.valid_index), so the loss is restricted to its classes;
- language: Dense(F -> text dim) (`proj_head`), L2 normalisation (eps 1e-12), logits =
  logit_scale * cosine against the fixed unit text rows of the dataset's classes (scale frozen: 100),
  computed in the feature width (see LanguageHead).
The S3DIS class -> union row order is `s3dis_order` ("intended" default, or "code_faithful").
"""

from typing import Any

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
from jax import lax

from ppt_jax import labels
from ppt_jax.models import inits, lovasz

HEADS = ("language", "decoupled", "unionized")
CRITERIA = ("cross_entropy", "lovasz")
MASKED = -1e9


def class_mask(conditions):
    """(D, K) bool: which logit columns exist for each dataset."""
    sizes = [labels.num_classes(name) for name in conditions]
    return np.arange(max(sizes))[None, :] < np.array(sizes)[:, None]


def union_rows(conditions, s3dis_order="intended"):
    """(D, K) int32: union-list row of every (dataset, own label) column; 0 in padded columns."""
    table = np.zeros(class_mask(conditions).shape, np.int32)
    for d, name in enumerate(conditions):
        rows = labels.valid_index(name, s3dis_order)
        table[d, :len(rows)] = rows
    return table


def _mask_columns(logits, conditions, condition):
    valid = jnp.asarray(class_mask(conditions))[condition]                    # (B, K)
    return jnp.where(valid[:, None, :], logits, MASKED)


class DecoupledHead(nn.Module):
    conditions: tuple

    @nn.compact
    def __call__(self, feat, condition):
        f, k = feat.shape[-1], class_mask(self.conditions).shape[1]
        kernels, biases = [], []
        for d, name in enumerate(self.conditions):
            c = labels.num_classes(name)
            init = inits.torch_linear(f)
            w = self.param(f"seg_heads_{d}_kernel", init, (f, c), jnp.float32)
            b = self.param(f"seg_heads_{d}_bias", init, (c,), jnp.float32)
            kernels.append(jnp.pad(w, ((0, 0), (0, k - c))))
            biases.append(jnp.pad(b, (0, k - c)))
        w, b = jnp.stack(kernels)[condition], jnp.stack(biases)[condition]     # (B, F, K), (B, K)
        logits = jnp.einsum("bnf,bfk->bnk", feat, w) + b[:, None]
        return _mask_columns(logits, self.conditions, condition)


class UnionHead(nn.Module):
    conditions: tuple
    s3dis_order: str

    @nn.compact
    def __call__(self, feat, condition):
        f = feat.shape[-1]
        init = inits.torch_linear(f)
        w = self.param("kernel", init, (f, len(labels.UNION_NAMES)), jnp.float32)
        b = self.param("bias", init, (len(labels.UNION_NAMES),), jnp.float32)
        rows = jnp.asarray(union_rows(self.conditions, self.s3dis_order))[condition]   # (B, K)
        logits = jnp.einsum("bnf,bfk->bnk", feat, jnp.take(w, rows, axis=1).transpose(1, 0, 2))
        return _mask_columns(logits + b[rows][:, None], self.conditions, condition)


class _Projection(nn.Module):
    """nn.Dense(features)'s parameters (same names, order and initialisation) for the caller to apply."""
    features: int

    @nn.compact
    def __call__(self, fan_in):
        init = inits.torch_linear(fan_in)
        return (self.param("kernel", init, (fan_in, self.features), jnp.float32),
                self.param("bias", init, (self.features,), jnp.float32))


class LanguageHead(nn.Module):
    """text_table: (36, D) unit rows for labels.UNION_NAMES, a fixed (non-trainable) constant.

    logits = scale * (z . t_k) / max(|z|, 1e-12) with z = feat W + b, computed without z: the numerator is
    feat (W T^T) + b T^T and |z|^2 = feat (W W^T) feat^T + 2 feat (W b) + b . b, so every per-site product
    has width F (96) or K, never the text dimension D (512). Equal to the direct formula in exact
    arithmetic (tests/test_models.py checks it in float64); the per-site work of the head drops ~5x."""
    conditions: tuple
    text_table: Any
    s3dis_order: str
    logit_scale: float

    @nn.compact
    def __call__(self, feat, condition):
        table = np.asarray(self.text_table, np.float32)
        if table.ndim != 2 or table.shape[0] != len(labels.UNION_NAMES):
            raise ValueError(f"model.text_table must be (len(labels.UNION_NAMES)={len(labels.UNION_NAMES)}"
                             f", dim); got shape {table.shape}")
        w, b = _Projection(table.shape[1], name="proj_head")(feat.shape[-1])
        text = jnp.asarray(table)[jnp.asarray(union_rows(self.conditions, self.s3dis_order))][condition]
        numerator = jnp.einsum("bnf,bfk->bnk", feat, jnp.einsum("fd,bkd->bfk", w, text)) \
            + jnp.einsum("d,bkd->bk", b, text)[:, None, :]
        half = feat @ (w @ w.T) + 2.0 * (w @ b)
        # A batched contraction, not sum(half * feat, -1): XLA:CPU runs that multiply-reduce ~10x slower.
        squared_norm = jnp.einsum("bnf,bnf->bn", half, feat)[..., None] + jnp.dot(b, b)
        logits = self.logit_scale * numerator * lax.rsqrt(jnp.maximum(squared_norm, 1e-24))
        return _mask_columns(logits, self.conditions, condition)


def segmentation_loss(logits, segment, condition=None, criteria=("cross_entropy",), num_conditions=1):
    """Sum of the `criteria` (each of weight 1, as the reference's criteria lists), float32.

    "cross_entropy": mean softmax cross-entropy over labelled sites (segment >= 0). Invalid columns
    already hold MASKED, so the softmax runs over the sample's own classes; padded sites carry segment
    -1 (design.md §1). Returns 0 when no site is labelled. "lovasz": `lovasz.lovasz_softmax` (needs
    `condition` (B,) and `num_conditions`).
    """
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown or not criteria:
        raise ValueError(f"model.criteria must be a non-empty tuple of {CRITERIA}, got {criteria!r}")
    total = 0.0
    for name in criteria:
        if name == "cross_entropy":
            total = total + cross_entropy(logits, segment)
        else:
            total = total + lovasz.lovasz_softmax(logits, segment, condition, num_conditions)
    return total


def cross_entropy(logits, segment):
    """Mean softmax cross-entropy over labelled sites (segment >= 0), float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labelled = segment >= 0
    nll = -jnp.take_along_axis(logp, jnp.maximum(segment, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)
