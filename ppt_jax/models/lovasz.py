"""Lovasz-softmax loss (Berman et al. 2018), as Pointcept's `LovaszLoss(mode="multiclass")`.

For each class c present among the labelled sites: errors e_i = |[y_i = c] - p_i(c)| sorted in
decreasing order, loss_c = sum_i e_(i) * g_i with g the increments of the Jaccard loss of the sorted
foreground (Alg. 1 of the paper); the loss is the mean of loss_c over the present classes. The reference
computes it over all labelled points of a batch, which always holds one dataset. Here a batch may mix
datasets, so the "classes" are (dataset, column) pairs: each dataset's sites are sorted separately
(one sort per column, keyed by dataset then error) and the mean runs over the pairs present. A
single-dataset batch gives the reference's value.
"""

import jax
import jax.numpy as jnp
from jax import lax


_ERR_BITS = 30
"""An error in [0, 1] is a float32 of at most 30 bits (1.0 = 0x3F800000), whose bits order as its values."""


def _order(err, group, num_groups):
    """Site order by (group, decreasing err): err (M,) in [0, 1], group (M,) int32 in [0, num_groups].

    With at most 4 groups both keys fit one uint32 (group in the top 2 bits, then 1.0 - err as bits):
    XLA:CPU sorts that with one payload in ~0.4x the time of a sort with two keys (its comparator runs
    per comparison). Only the order of exactly tied errors can differ, and a tied block's loss does not
    depend on its order (its Jaccard increments telescope)."""
    m = err.shape[0]
    index = jnp.arange(m, dtype=jnp.int32)
    if num_groups + 1 > 2 ** (32 - _ERR_BITS):
        return lax.sort((group, -err, index), num_keys=2)[2]
    key = (group.astype(jnp.uint32) << _ERR_BITS) | (jnp.uint32(0x3F800000) - lax.bitcast_convert_type(err, jnp.uint32))
    return lax.sort((key, index), num_keys=1)[1]


def _column_losses(err, fg, group, num_groups):
    """Lovasz loss of one column for each group: err, fg (M,) float32, group (M,) int32 (num_groups =
    ignored). Returns (loss (num_groups,), present (num_groups,) bool)."""
    m = err.shape[0]
    order = _order(lax.stop_gradient(err), group, num_groups)
    g, e, f = group[order], err[order], fg[order]
    counts = jax.ops.segment_sum(jnp.ones_like(f), g, num_groups + 1, indices_are_sorted=True)
    gts = jax.ops.segment_sum(f, g, num_groups + 1, indices_are_sorted=True)
    before = jnp.cumsum(counts) - counts                      # sites of earlier groups
    fg_before = jnp.cumsum(gts) - gts
    cum_fg = jnp.cumsum(f) - fg_before[g]
    cum_bg = jnp.arange(1, m + 1, dtype=f.dtype) - before[g] - cum_fg
    jaccard = 1.0 - (gts[g] - cum_fg) / (gts[g] + cum_bg)
    first = jnp.arange(m) == before[g]
    grad = jaccard - jnp.where(first, 0.0, jnp.concatenate([jnp.zeros((1,), f.dtype), jaccard[:-1]]))
    loss = jax.ops.segment_sum(e * lax.stop_gradient(grad), g, num_groups + 1, indices_are_sorted=True)
    return loss[:num_groups], gts[:num_groups] > 0


def lovasz_softmax(logits, segment, condition, num_conditions):
    """logits (B, N, K) (absent columns of a dataset hold a large negative value), segment (B, N) int
    (-1 = ignore), condition (B,) int in [0, num_conditions) -> scalar float32 (0 without labels)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(-1, logits.shape[-1])
    labels = segment.reshape(-1)
    group = jnp.where(labels >= 0, jnp.broadcast_to(condition[:, None], segment.shape).reshape(-1),
                      num_conditions).astype(jnp.int32)
    columns = jnp.arange(logits.shape[-1])
    fg = (labels[None, :] == columns[:, None]).astype(jnp.float32)               # (K, M)
    err = jnp.abs(fg - probs.T)
    loss, present = jax.vmap(_column_losses, in_axes=(0, 0, None, None))(err, fg, group, num_conditions)
    count = jnp.sum(present)
    return jnp.sum(jnp.where(present, loss, 0.0)) / jnp.maximum(count, 1)
