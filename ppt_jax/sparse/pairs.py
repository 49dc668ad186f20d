"""Exact-pair submanifold 3x3x3 convolution: every product has an active neighbour (spconv's indice pairs).

The dense form (conv.py) multiplies all 27 taps of every site; on indoor surfaces only 12-15 of them hold
a site, so half its products are zeros. This form keeps, per level, a list of the active (output, input)
pairs of the 13 taps t < 13 only, built once per batch inside the hierarchy: a submanifold table is
symmetric (j = nbr(i, t) <=> i = nbr(j, 26 - t), the offsets of t and 26 - t are opposite), so each pair
(o, i) of tap t also serves tap 26 - t as (i, o). A level's pairs are two `PairList`s of the same layout:

  out / inp (P,)          output and input site of each pair of tap t; padding entries hold N_l (no site)
  chunk_tap (P // S,)     the tap t < 13 of each chunk of S consecutive pairs (every chunk holds one tap)
  num_chunks ()           chunks that hold real pairs; the convs loop over these only

The first ("main") list holds each tap's pairs in whole chunks of S (`HierarchySpec.pair_chunks`), with a
static capacity (`HierarchySpec.pair_capacities`; pairs beyond it are counted in `Hierarchy.dropped_pairs`
and `check_hierarchy` raises, as for sites). The second ("tail") list holds each tap's remaining < S pairs
in chunks of S / TAIL_SPLIT, capacity 13 S (it cannot overflow). Pairs are sorted by output site within a
tap, so a chunk's outputs are distinct sites, and so are its inputs. Padding then costs under one small
chunk per tap: 1-6 % more products than the exact count on a 100k crop, against 9-38 % with one chunk
size (benchmarks/README.md).

  forward   y = x W_13 + sum over chunks c of tap t: y[out_c] += x[inp_c] W_t, y[inp_c] += x[out_c] W_26-t
  backward  one more pass over the same chunks, with the same four gathers x[inp], x[out], dy[out], dy[inp]:
            dW_t += x[inp]^T dy[out], dx[inp] += dy[out] W_t^T, and the mirrored pair for tap 26 - t;
            dx += dy W_13^T, dW_13 = x^T dy

The loops are sequential and every scatter's indices are distinct sites, so the accumulation order is fixed:
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
HALF = np.arange(CENTRE, dtype=np.int32)
"""The stored taps t < 13; tap 26 - t is each one's mirror."""
TAIL_SPLIT = 4
"""A tail chunk holds S / TAIL_SPLIT pairs: smaller tail chunks pad less but add loop steps."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PairList:
    """Pairs of one level's 3x3x3 table in chunks of one size (see module docstring); batched under vmap."""

    out: jax.Array
    inp: jax.Array
    chunk_tap: jax.Array
    num_chunks: jax.Array

    @property
    def chunk(self):
        return self.out.shape[-1] // self.chunk_tap.shape[-1]


def tail_chunk(chunk):
    """Pairs per tail chunk for main chunks of `chunk` pairs."""
    return max(chunk // TAIL_SPLIT, 1)


def products(counts, chunk):
    """Pair products the conv computes per stored tap for `counts` real pairs per tap (numpy, any shape
    (..., 13)): whole main chunks plus the tail rounded up to tail chunks (what sizing reports)."""
    counts = np.asarray(counts, np.int64)
    small = tail_chunk(chunk)
    main = counts // chunk * chunk
    return main + -(-(counts - main) // small) * small


def _layout(size, capacity, chunk):
    """For a list of `capacity` slots in which tap t holds `size[t]` (a multiple of `chunk`) slots: each
    tap's first slot (13,), the tap of each chunk, and the number of chunks that hold real pairs."""
    ends = jnp.cumsum(size)
    starts = jnp.arange(capacity // chunk, dtype=jnp.int32) * chunk
    which = jnp.minimum(jnp.searchsorted(ends, starts, side="right"), CENTRE - 1)
    return ends - size, jnp.asarray(HALF)[which], (jnp.minimum(ends[-1], capacity) // chunk).astype(jnp.int32)


def build_pairs(nbr, capacity, chunk):
    """(N, 27) neighbour table (N where absent) -> ((main, tail) PairLists, dropped pair count), one sample.

    Tap t's first counts_t // chunk whole chunks of pairs go to the main list at a multiple of `chunk`, the
    rest to the tail list at a multiple of the tail chunk, both in output order; the rest of each tap's last
    tail chunk and the ends of both lists are padding (out = inp = N)."""
    n = nbr.shape[0]
    if capacity % chunk:
        raise ValueError(f"pair capacity {capacity} must be a multiple of the chunk size {chunk}")
    small = tail_chunk(chunk)
    tail_capacity = CENTRE * chunk
    table = nbr[:, :CENTRE]                                                  # (N, 13)
    active = table < n
    counts = jnp.sum(active, axis=0, dtype=jnp.int32)
    main = counts // chunk * chunk
    tail = (counts - main + small - 1) // small * small
    rank = jnp.cumsum(active, axis=0, dtype=jnp.int32) - active
    main_start, main_tap, main_chunks = _layout(main, capacity, chunk)
    tail_start, tail_tap, tail_chunks = _layout(tail, tail_capacity, small)
    in_main = rank < main[None, :]
    pos_main = main_start[None, :] + rank
    dropped = jnp.sum(active & in_main & (pos_main >= capacity), dtype=jnp.int32)
    # One scatter per index array into [main | tail]; dropped main entries go past both (index `total`).
    total = capacity + tail_capacity
    pos = jnp.where(in_main, jnp.where(pos_main < capacity, pos_main, total),
                    capacity + tail_start[None, :] + rank - main[None, :])
    flat = jnp.where(active, pos, total).reshape(-1)
    sites = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], table.shape).reshape(-1)
    out = jnp.full((total,), n, jnp.int32).at[flat].set(sites, mode="drop")
    inp = jnp.full((total,), n, jnp.int32).at[flat].set(table.reshape(-1), mode="drop")
    lists = (PairList(out[:capacity], inp[:capacity], main_tap, main_chunks),
             PairList(out[capacity:], inp[capacity:], tail_tap, tail_chunks))
    return lists, dropped


def _rows(x, idx):
    """x (M, C), idx (S,) -> (S, C). Indices >= M are clamped (a plain gather, no select): every caller
    reads padding entries (index N) either from an appended zero row or into a product that is dropped
    or multiplied by zero."""
    return x.at[idx].get(mode="clip")


def _chunk(pairs, k):
    size = pairs.chunk
    sl = lambda a: lax.dynamic_slice_in_dim(a, k * size, size)
    return sl(pairs.out), sl(pairs.inp), pairs.chunk_tap[k]


def _both(pairs, k):
    """Chunk k's (2, S) site indices [out; inp] and (2,) taps [t; 26 - t]: row 0 is tap t's pairs, row 1
    the same pairs read as tap 26 - t's. Gathering, multiplying and scattering both rows as one batch
    halves a loop step's thunks (each costs a fixed dispatch on XLA:CPU)."""
    out, inp, tap = _chunk(pairs, k)
    return out, inp, jnp.stack([tap, 26 - tap])


def _pair_conv(x, pairs, w, mask, dot):
    """One sample: (N, C), (main, tail) PairLists, (27, C, D), (N,) -> (N, D) float32, zero at padding rows.

    A padding entry (out = inp = N) gathers some row of x into products that both scatters drop, so only
    the centre tap writes padding rows: masking its product masks the loops' output, and no masked copy of
    the output exists (a norm reading it keeps one buffer for its backward pass, not the output and its copy)."""
    y = jnp.where(mask[:, None], dot("nc,cd->nd", x, w[CENTRE]), 0)

    def body(part):
        def step(k, y):
            out, inp, taps = _both(part, k)
            prod = dot("bsc,bcd->bsd", _rows(x, jnp.stack([inp, out])), w[taps])   # (2, S, D)
            return y.at[out].add(prod[0], mode="drop").at[inp].add(prod[1], mode="drop")
        return step

    for part in pairs:
        y = lax.fori_loop(0, part.num_chunks, body(part), y)
    return y


def _pair_conv_grads(x, dy, pairs, w, dot, weight_grad):
    """One sample: dx (N, C) and dW (27, C, D) float32 in one pass over the chunks, for dy zero at padding.

    Each chunk gathers x and dy (dy with a zero row appended, so padding entries give zero rows) at its
    inputs and outputs once, for tap t: dW_t += x[inp]^T dy[out], dx[inp] += dy[out] W_t^T, and for its
    mirror 26 - t: dW += x[out]^T dy[inp], dx[out] += dy[inp] W^T (padding entries scatter to N, dropped)."""
    dyz = jnp.concatenate([dy, jnp.zeros((1, dy.shape[1]), dy.dtype)])
    dx = dot("nd,cd->nc", dy, w[CENTRE])

    def body(part):
        def step(k, carry):
            dx, dw = carry
            out, inp, taps = _both(part, k)
            xs = _rows(x, jnp.stack([inp, out]))                                   # (2, S, C)
            gs = _rows(dyz, jnp.stack([out, inp]))                                 # (2, S, D)
            dw = dw.at[taps].add(dot("bsc,bsd->bcd", xs, gs))
            back = dot("bsd,bcd->bsc", gs, w[taps])
            return dx.at[inp].add(back[0], mode="drop").at[out].add(back[1], mode="drop"), dw
        return step

    # The carry starts as the centre tap's dW (no chunk adds to it), padded with zeros: a carry of plain
    # zeros is one shared constant, which XLA:CPU copies for every conv's loop at the start of the step,
    # so every accumulator stayed allocated through the forward pass.
    carry = (dx, jnp.pad(weight_grad(x, dy)[None], ((CENTRE, 26 - CENTRE), (0, 0), (0, 0))))
    for part in pairs:
        carry = lax.fori_loop(0, part.num_chunks, body(part), carry)
    return carry


def make_pair_conv(dot, weight_grad):
    """The custom-VJP conv on batched inputs (B, N, C), (27, C, D), (B, N), batched (main, tail) PairLists,
    for a given contraction `dot(spec, a, b)` (float32 accumulation) and `weight_grad(x, dy)` = x^T dy
    summed over sites (the centre tap's dW). Samples run one after another (`lax.map`)."""

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
