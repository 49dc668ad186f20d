"""Prompt-driven normalization (PDNorm, docs/reference.md §2) over padded, possibly mixed-dataset batches.

One BatchNorm per dataset ("decoupled": own statistics and affine) followed by a shared modulation
`SiLU -> Dense(2C)` of the sample's 256-d prompt, `y * (1 + scale) + shift` (first half = shift).

Batches may mix datasets: `condition` (B,) selects, per row, the BatchNorm whose statistics and
affine normalise that row. Statistics are masked means/variances over the real sites of all rows of
one condition inside one *statistics group*: `group_size` consecutive rows (0 = the whole batch).
Under `jit` with a batch sharded over devices, group_size=0 gives statistics synchronised across
devices (XLA inserts the reductions); group_size = rows per device reproduces the reference's
per-GPU BatchNorm (`sync_bn=False`, 3 scenes per GPU). Running statistics are updated (train only,
torch momentum 0.01 = flax momentum 0.99, torch's unbiased running variance) from the statistics
pooled over the whole batch for each condition present; conditions absent from the batch keep theirs.
All statistics are float32 whatever the compute dtype.
"""

import functools

import jax
import jax.numpy as jnp
import flax.linen as nn

from ppt_jax.models import inits


def _group_sums(onehot, per_row, group_size):
    """Sum per-row values (B, ...) into (groups, conditions, ...) with a (B, D) one-hot."""
    b, d = onehot.shape
    g = group_size or b
    if b % g:
        raise ValueError(f"model.bn_group_size={group_size} must divide the batch size {b}")
    oh = onehot.reshape(b // g, g, d)
    return jnp.einsum("gbd,gb...->gd...", oh, per_row.reshape(b // g, g, *per_row.shape[1:]))


def _per_row(onehot, per_group, group_size):
    """Inverse of `_group_sums`: each row picks its own (group, condition) entry -> (B, ...)."""
    b, d = onehot.shape
    g = group_size or b
    oh = onehot.reshape(b // g, g, d)
    return jnp.einsum("gbd,gd...->gb...", oh, per_group).reshape(b, *per_group.shape[2:])


def _row_sums(a, b):
    """sum over sites of a * b per row and channel: (B, N, C) x (B, N, C) -> (B, C), written as a batched
    contraction: XLA:CPU runs that far faster than the fused multiply-reduce of `jnp.sum(a * b, 1)`
    (figures in benchmarks/README.md)."""
    return jnp.einsum("bnc,bnc->bc", a, b, preferred_element_type=jnp.float32)


def _moments(xm, m, onehot, group_size):
    """Per-row (mean, var) of its (group, condition) and the pooled per-condition (n, mean, var).

    xm: x with padding rows zeroed. Sums and sums of squares (one pass, float32; variance clamped at 0):
    post-conv activations have |mean| of the order of their std, where this loses no precision that matters
    against the float64 reference (tests/test_models.py)."""
    count = _group_sums(onehot, m.sum(1), group_size)                          # (G, D)
    total = _group_sums(onehot, xm.sum(1), group_size)                         # (G, D, C)
    sq = _group_sums(onehot, _row_sums(xm, xm), group_size)
    cnt = jnp.maximum(count, 1.0)[..., None]
    mean = total / cnt
    var = jnp.maximum(sq / cnt - jnp.square(mean), 0.0)
    n = count.sum(0)                                                          # (D,)
    denom = jnp.maximum(n, 1.0)[:, None]
    pmean = total.sum(0) / denom
    pvar = jnp.maximum(sq.sum(0) / denom - jnp.square(pmean), 0.0)
    return _per_row(onehot, mean, group_size), _per_row(onehot, var, group_size), (n, pmean, pvar), cnt


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def normalize(x, mask, onehot, scale, shift, group_size, epsilon, masked_input):
    """Masked batch normalisation per (statistics group, condition) with per-row scale/shift (B, C):
    y = (x - mean) * rsqrt(var + eps) * scale + shift at real sites, 0 at padding; also the pooled
    per-condition (count, mean, biased var) for the running statistics (no gradient).

    The VJP is BatchNorm's closed form (dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    over the group's real sites), so a norm costs two elementwise passes forward and one backward, the
    rest batched contractions (autodiff through the moments was much slower: benchmarks/README.md).

    masked_input: x is already zero at padding rows (a conv's output), so the moments read it as is. Masking it
    again would make XLA keep both x and its masked copy for the backward pass (benchmarks/README.md)."""
    return _normalize_fwd(x, mask, onehot, scale, shift, group_size, epsilon, masked_input)[0]


def _normalize_fwd(x, mask, onehot, scale, shift, group_size, epsilon, masked_input):
    m = mask.astype(jnp.float32)
    xm = x if masked_input else jnp.where(mask[..., None], x, 0.0)
    mean, var, pooled, cnt = _moments(xm, m, onehot, group_size)
    rstd = jax.lax.rsqrt(var + epsilon)
    alpha = rstd * scale
    y = jnp.where(mask[..., None], x * alpha[:, None] + (shift - mean * alpha)[:, None], 0.0)
    res = (xm, m, mask, onehot, mean, rstd, scale, cnt)
    return (y, jax.tree_util.tree_map(jax.lax.stop_gradient, pooled)), res


def _normalize_bwd(group_size, epsilon, masked_input, res, cts):
    xm, m, mask, onehot, mean, rstd, scale, cnt = res
    dy = cts[0]
    s_dy = jnp.einsum("bnc,bn->bc", dy, m, preferred_element_type=jnp.float32)   # sum dy (real sites)
    s_dyxhat = rstd * (_row_sums(dy, xm) - mean * s_dy)                           # sum dy * xhat
    pool = lambda t: _per_row(onehot, _group_sums(onehot, t, group_size) / cnt, group_size)
    mean_d, mean_dx = pool(s_dy * scale), pool(s_dyxhat * scale)                  # of dxhat = dy * scale
    p = rstd * scale
    q = -jnp.square(rstd) * mean_dx
    r = -rstd * mean_d - mean * q
    dx = jnp.where(mask[..., None], dy * p[:, None] + xm * q[:, None] + r[:, None], 0.0)
    return dx, None, None, s_dyxhat, s_dy


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class PDNorm(nn.Module):
    """BatchNorm per condition (decouple) + optional prompt modulation (adaptive).

    decouple=False: one BatchNorm shared by all datasets (statistics over all rows of a group).
    adaptive=False: no modulation (the prompt is unused here).
    zero_init: zero the modulation Dense (the paper: identity at init); else trunc_normal(0.02)
    as the reference's configs (`zero_init=False`).
    momentum, epsilon, group_size: `config.model.bn_momentum`, `bn_epsilon`, `bn_group_size`. No field
    has a default here: `models.PPT` holds them all (the reference's) and its backbones pass them on.
    masked_input: the input is zero at padding rows by construction (a sparse conv's output: SpUNet), so the
    norm does not mask it again; False where it follows a layer with a bias (PTv3).
    """
    num_conditions: int
    decouple: bool
    adaptive: bool
    zero_init: bool
    momentum: float
    epsilon: float
    group_size: int
    masked_input: bool

    @nn.compact
    def __call__(self, x, mask, condition, context, train):
        c = x.shape[-1]
        d = self.num_conditions if self.decouple else 1
        scale = self.param("scale", nn.initializers.ones, (d, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d, c), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (d, c), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (d, c), jnp.float32)
        cond = condition if self.decouple else jnp.zeros_like(condition)
        onehot = jax.nn.one_hot(cond, d, dtype=jnp.float32)                    # (B, D)
        xf = x.astype(jnp.float32)
        if train:
            a, b = onehot @ scale, onehot @ bias
        else:
            # Fold normalisation and affine into one per-row scale/shift (B, C).
            mean, var = onehot @ ra_mean.value, onehot @ ra_var.value
            a = jax.lax.rsqrt(var + self.epsilon) * (onehot @ scale)
            b = (onehot @ bias) - mean * a
        if self.adaptive:
            kinit = nn.initializers.zeros if self.zero_init else inits.trunc_normal(0.02)
            mod = nn.Dense(2 * c, kernel_init=kinit, bias_init=nn.initializers.zeros,
                           name="modulation")(nn.silu(context.astype(jnp.float32)))
            shift, gain = mod[:, :c], 1.0 + mod[:, c:]
            a, b = a * gain, b * gain + shift
        if not train:
            return jnp.where(mask[..., None], xf * a[:, None] + b[:, None], 0.0).astype(x.dtype)
        y, (n, pmean, pvar) = normalize(xf, mask, onehot, a, b, self.group_size, self.epsilon,
                                         self.masked_input)
        if not self.is_initializing():
            seen = (n > 0)[:, None]
            unbiased = pvar * (n / jnp.maximum(n - 1.0, 1.0))[:, None]
            mom = self.momentum
            ra_mean.value = jnp.where(seen, mom * ra_mean.value + (1 - mom) * pmean, ra_mean.value)
            ra_var.value = jnp.where(seen, mom * ra_var.value + (1 - mom) * unbiased, ra_var.value)
        return y.astype(x.dtype)
