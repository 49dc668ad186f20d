"""Exact-pair submanifold 3x3x3 convolution: every product has an active neighbour (spconv's indice pairs).

The dense form (conv.py) multiplies all 27 taps of every site; on indoor surfaces only 12-15 of them hold
a site, so half its products are zeros. This form keeps, per level, one list of the active (output,
input) pairs of the 26 off-centre taps, built once per batch inside the hierarchy:

  pairs.out / pairs.inp (P,)  output and input site of each pair; padding entries hold N_l (never a site)
  pairs.chunk_tap (P // S,)   the tap of each chunk of S consecutive pairs (every chunk holds one tap)
  pairs.num_chunks ()         chunks that hold real pairs; the convs loop over these only

Each tap's pairs are sorted by output site and padded to a multiple of the chunk size S, so a chunk is one
(S, C) @ (C, D) matmul with that tap's weight. The centre tap is one plain (N, C) @ (C, D) matmul over all
sites. The capacity P is static (`HierarchySpec.pair_capacities`); pairs beyond it are counted in
`Hierarchy.dropped_pairs` and `check_hierarchy` raises, as for sites.

  forward   y = x W_13 + sum over chunks c: y[out_c] += x[inp_c] W_tap(c)
  backward  one more pass over the same chunks: g = dy[out_c], x_c = x[inp_c] (two gathers), then
            dx[inp_c] += g W_tap(c)^T and dW_tap(c) += x_c^T g; dx += dy W_13^T, dW_13 = x^T dy

The loop is sequential and every chunk's outputs (and inputs) are distinct sites, so the accumulation order is fixed:
outputs and gradients are bitwise reproducible on every backend (no unordered scatter-add). The samples of
a batch run one after another (`lax.map`), each over its own chunks with 2-D gathers, matmuls and
scatters. A loop body batched over samples ran every sample to the longest one's chunk count, and XLA:CPU
built 2-D index arrays and copied each chunk's product into the batched scatter's layout: the whole 100k
train step took 5-11 % longer (benchmarks/README.md).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CENTRE = 13
OFF_CENTRE = np.array([t for t in range(27) if t != CENTRE], np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PairList:
    """Active off-centre pairs of one level's 3x3x3 table (see module docstring); batched under vmap."""

    out: jax.Array
    inp: jax.Array
    chunk_tap: jax.Array
    num_chunks: jax.Array


def build_pairs(nbr, capacity, chunk):
    """(N, 27) neighbour table (N where absent) -> (PairList, dropped pair count) for one sample.

    Tap t's pairs occupy [offset_t, offset_t + count_t) with offset_t a multiple of `chunk`, in output
    order; the rest of each tap's last chunk and the tail of the list are padding (out = inp = N)."""
    n = nbr.shape[0]
    if capacity % chunk:
        raise ValueError(f"pair capacity {capacity} must be a multiple of the chunk size {chunk}")
    table = nbr[:, OFF_CENTRE]                                               # (N, 26)
    active = table < n
    counts = jnp.sum(active, axis=0, dtype=jnp.int32)
    padded = (counts + chunk - 1) // chunk * chunk
    ends = jnp.cumsum(padded)
    rank = jnp.cumsum(active, axis=0, dtype=jnp.int32) - active
    pos = jnp.where(active, (ends - padded)[None, :] + rank, capacity)        # (N, 26); beyond: dropped
    flat = pos.reshape(-1)
    sites = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], table.shape).reshape(-1)
    out = jnp.full((capacity,), n, jnp.int32).at[flat].set(sites, mode="drop")
    inp = jnp.full((capacity,), n, jnp.int32).at[flat].set(table.reshape(-1), mode="drop")
    starts = jnp.arange(capacity // chunk, dtype=jnp.int32) * chunk
    which = jnp.minimum(jnp.searchsorted(ends, starts, side="right"), len(OFF_CENTRE) - 1)
    chunk_tap = jnp.asarray(OFF_CENTRE)[which]
    num_chunks = jnp.minimum(ends[-1], capacity) // chunk
    dropped = jnp.sum(active & (pos >= capacity), dtype=jnp.int32)
    return PairList(out=out, inp=inp, chunk_tap=chunk_tap.astype(jnp.int32),
                    num_chunks=num_chunks.astype(jnp.int32)), dropped


def _rows(x, idx):
    """x (M, C), idx (S,) -> (S, C). Indices >= M are clamped (a plain gather, no select): every caller
    reads padding entries (index N) either from an appended zero row or into a product that is dropped
    or multiplied by zero."""
    return x.at[idx].get(mode="clip")


def _chunk(pairs, k):
    size = pairs.out.shape[0] // pairs.chunk_tap.shape[0]
    sl = lambda a: lax.dynamic_slice_in_dim(a, k * size, size)
    return sl(pairs.out), sl(pairs.inp), pairs.chunk_tap[k]


def _pair_conv(x, pairs, w, mask, dot):
    """One sample: (N, C), PairList, (27, C, D), (N,) -> (N, D) float32, zero at padding rows.

    A padding entry gathers some row of x and its product is dropped by the scatter (out = N), so only the
    centre tap writes padding rows: masking its product masks the loop's output, and no masked copy of the
    output exists (a norm reading it keeps one buffer for its backward pass, not the output and its copy)."""
    y = jnp.where(mask[:, None], dot("nc,cd->nd", x, w[CENTRE]), 0)

    def body(k, y):
        out, inp, tap = _chunk(pairs, k)
        return y.at[out].add(dot("sc,cd->sd", _rows(x, inp), w[tap]), mode="drop")

    return lax.fori_loop(0, pairs.num_chunks, body, y)


def _pair_conv_grads(x, dy, pairs, w, dot, weight_grad):
    """One sample: dx (N, C) and dW (27, C, D) float32 in one pass over the chunks, for dy zero at padding.

    Each chunk gathers dy[out] (from dy with a zero row appended, so padding entries give zero rows) and
    x[inp] once, and uses both for dW_t += x[inp]^T dy[out] and dx[inp] += dy[out] W_t^T (a chunk's inp
    are distinct sites; padding entries scatter to N and are dropped)."""
    dyz = jnp.concatenate([dy, jnp.zeros((1, dy.shape[1]), dy.dtype)])
    dx = dot("nd,cd->nc", dy, w[CENTRE])

    def body(k, carry):
        dx, dw = carry
        out, inp, tap = _chunk(pairs, k)
        g, xi = _rows(dyz, out), _rows(x, inp)
        dw = dw.at[tap].add(dot("sc,sd->cd", xi, g))
        dx = dx.at[inp].add(dot("sd,cd->sc", g, w[tap]), mode="drop")
        return dx, dw

    # The carry starts as the centre tap's dW (no chunk adds to it), padded with zeros: a carry of plain
    # zeros is one shared constant, which XLA:CPU copies for every conv's loop at the start of the step,
    # so every accumulator stayed allocated through the forward pass.
    dw = jnp.pad(weight_grad(x, dy)[None], ((CENTRE, 26 - CENTRE), (0, 0), (0, 0)))
    return lax.fori_loop(0, pairs.num_chunks, body, (dx, dw))


def make_pair_conv(dot, weight_grad):
    """The custom-VJP conv on batched inputs (B, N, C), (27, C, D), (B, N), batched PairList, for a given
    contraction `dot(spec, a, b)` (float32 accumulation) and `weight_grad(x, dy)` = x^T dy summed over
    sites (the centre tap's dW). Samples run one after another (`lax.map`)."""

    @jax.custom_vjp
    def conv(x, w, mask, pairs):
        y = lax.map(lambda s: _pair_conv(s[0], s[1], w, s[2], dot), (x, pairs, mask))
        return y.astype(jnp.result_type(x.dtype, w.dtype))

    def fwd(x, w, mask, pairs):
        return conv(x, w, mask, pairs), (x, w, mask, pairs)

    def bwd(res, dy):
        x, w, mask, pairs = res
        dy = jnp.where(mask[..., None], dy, 0)
        dx, dw = lax.map(lambda s: _pair_conv_grads(s[0], s[1], s[2], w, dot, weight_grad), (x, dy, pairs))
        return dx.astype(x.dtype), dw.sum(0).astype(w.dtype), None, None

    conv.defvjp(fwd, bwd)
    return conv
