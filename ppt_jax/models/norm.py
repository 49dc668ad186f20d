"""Prompt-driven normalization (PDNorm, spec §2a) over padded, possibly mixed-dataset batches.

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


def _masked_sum(m, x):
    """sum over sites of m * x: (B, N) weights, (B, N, C) -> (B, C), as a matmul (multithreaded on CPU,
    3x faster than XLA:CPU's reduction over the site axis)."""
    return jnp.einsum("bn,bnc->bc", m, x, preferred_element_type=jnp.float32)


def masked_moments(x, mask, onehot, group_size):
    """Two-pass masked mean/variance per (group, condition); also the whole-batch pooled ones.

    x (B, N, C) float32, mask (B, N) bool, onehot (B, D) float32.
    Returns per-row (mean, var) (B, C) for normalising, and per-condition pooled
    (count (D,), mean (D, C), biased var (D, C)) for the running statistics.
    """
    m = mask.astype(jnp.float32)
    count = _group_sums(onehot, m.sum(1), group_size)                          # (G, D)
    total = _group_sums(onehot, _masked_sum(m, x), group_size)                 # (G, D, C)
    mean = total / jnp.maximum(count, 1.0)[..., None]
    mean_row = _per_row(onehot, mean, group_size)                              # (B, C)
    sq = _group_sums(onehot, _masked_sum(m, jnp.square(x - mean_row[:, None])), group_size)
    var_row = _per_row(onehot, sq / jnp.maximum(count, 1.0)[..., None], group_size)
    # Pool the groups (parallel-variance formula) for the running statistics.
    n = count.sum(0)                                                          # (D,)
    pooled_mean = total.sum(0) / jnp.maximum(n, 1.0)[:, None]
    pooled_sq = (sq + count[..., None] * jnp.square(mean - pooled_mean)).sum(0)
    return (mean_row, var_row), (n, pooled_mean, pooled_sq / jnp.maximum(n, 1.0)[:, None])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def standardize(x, mask, onehot, group_size, epsilon):
    """Masked batch standardisation per (group, condition): ((x - mean) * rsqrt(var + eps), moments).

    Its VJP is BatchNorm's closed form, dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    over the group's real sites, two masked matmul reductions and one pass, instead of autodiff through
    both moment passes (the norms were the largest item of the step's profile). The moments are outputs
    without gradient (they feed the running statistics)."""
    return _standardize(x, mask, onehot, group_size, epsilon)[0]


def _standardize(x, mask, onehot, group_size, epsilon):
    (mean, var), pooled = masked_moments(x, mask, onehot, group_size)
    rstd = jax.lax.rsqrt(var + epsilon)
    xhat = (x - mean[:, None]) * rstd[:, None]
    return (xhat, jax.tree_util.tree_map(jax.lax.stop_gradient, pooled)), rstd


def _standardize_fwd(x, mask, onehot, group_size, epsilon):
    out, rstd = _standardize(x, mask, onehot, group_size, epsilon)
    return out, (out[0], rstd, mask, onehot)


def _standardize_bwd(group_size, epsilon, res, cts):
    xhat, rstd, mask, onehot = res
    dxhat = cts[0]
    m = mask.astype(jnp.float32)
    count = jnp.maximum(_group_sums(onehot, m.sum(1), group_size), 1.0)[..., None]
    mean_d = _per_row(onehot, _group_sums(onehot, _masked_sum(m, dxhat), group_size) / count, group_size)
    mean_dx = _per_row(onehot, _group_sums(onehot, _masked_sum(m, dxhat * xhat), group_size) / count,
                       group_size)
    dx = rstd[:, None] * (dxhat - mean_d[:, None] - xhat * mean_dx[:, None])
    return jnp.where(mask[..., None], dx, 0.0), None, None


standardize.defvjp(_standardize_fwd, _standardize_bwd)


class PDNorm(nn.Module):
    """BatchNorm per condition (decouple) + optional prompt modulation (adaptive).

    decouple=False: one BatchNorm shared by all datasets (statistics over all rows of a group).
    adaptive=False: no modulation (the prompt is unused here).
    zero_init: zero the modulation Dense (the paper: identity at init); else trunc_normal(0.02)
    as the reference's configs (`zero_init=False`).
    """
    num_conditions: int
    decouple: bool = True
    adaptive: bool = True
    zero_init: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-3
    group_size: int = 0

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
            xhat, (n, pmean, pvar) = standardize(xf, mask, onehot, self.group_size, self.epsilon)
            if not self.is_initializing():
                seen = (n > 0)[:, None]
                unbiased = pvar * (n / jnp.maximum(n - 1.0, 1.0))[:, None]
                mom = self.momentum
                ra_mean.value = jnp.where(seen, mom * ra_mean.value + (1 - mom) * pmean, ra_mean.value)
                ra_var.value = jnp.where(seen, mom * ra_var.value + (1 - mom) * unbiased, ra_var.value)
            base, a, b = xhat, onehot @ scale, onehot @ bias
        else:
            # Fold normalisation and affine into one per-row scale/shift (B, C).
            mean, var = onehot @ ra_mean.value, onehot @ ra_var.value
            base = xf
            a = jax.lax.rsqrt(var + self.epsilon) * (onehot @ scale)
            b = (onehot @ bias) - mean * a
        if self.adaptive:
            kinit = nn.initializers.zeros if self.zero_init else inits.trunc_normal(0.02)
            mod = nn.Dense(2 * c, kernel_init=kinit, bias_init=nn.initializers.zeros,
                           name="modulation")(nn.silu(context.astype(jnp.float32)))
            shift, gain = mod[:, :c], 1.0 + mod[:, c:]
            a, b = a * gain, b * gain + shift
        return (base * a[:, None] + b[:, None]).astype(x.dtype)
