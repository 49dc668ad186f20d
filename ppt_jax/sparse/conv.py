"""Sparse convolutions on a Hierarchy: submanifold, stride-2 down and its inverse (spconv semantics).

All three are linear maps built from two gather-based primitives:
  tap conv   y[i] = sum_t x[table[i, t]] @ w[t]          (table: neighbours or children, missing -> 0)
  slot conv  y[p] = (x[q] @ w[c]) at slot[p] = 8 q + c   (each fine site reads its parent's tap-c product)
and each one's transpose is the other one (or, for submanifold convs, itself with mirrored taps, because
p + delta = q  <=>  q - delta = p). The custom VJPs below use those transposes, so the backward pass is
gathers and matmuls too: no scatter-add, hence bitwise deterministic on every backend; dx and dw each
cost about one forward pass. Products accumulate in float32 (`preferred_element_type`), also for
bfloat16 inputs.

This module is the dense form (all 27 taps of every site); `pairs.py` is the exact-pair form of the 3x3x3
submanifold conv that a HierarchySpec can select per level (benchmarks/README.md compares them).

Padding rows of the input are never read; outputs at padding sites are exactly 0. Inputs must be finite at
padding rows (a zero times inf would reach the weight gradient).
"""

import jax
import jax.numpy as jnp
from jax import lax

from ppt_jax.sparse import pairs as P

_F32 = jnp.float32


def _operands(*arrays):
    """On CPU, bfloat16 operands go to the matmul as float32: XLA:CPU has no fast bfloat16 GEMM
    (benchmarks/README.md) and bf16 x bf16 products are exact in float32, so the result is the same."""
    if jax.default_backend() == "cpu":
        return tuple(a.astype(_F32) if a.dtype == jnp.bfloat16 else a for a in arrays)
    return arrays


def _dot(a, b):
    return jnp.dot(*_operands(a, b), preferred_element_type=_F32)


def _einsum(spec, a, b):
    return jnp.einsum(spec, *_operands(a, b), preferred_element_type=_F32)


ROWS = 1024
"""Sites per step of a weight gradient's loop. Summing x^T dy over 100k sites in one contraction makes
XLA:CPU write a transposed copy of x first (as long as the product itself); chunk by chunk the transpose
stays in cache (benchmarks/README.md)."""


def _sum_row_chunks(n, fn, init):
    """init + sum of fn(start, keep) over row chunks [start, start + ROWS) covering n rows, in order. The
    last chunk is moved back to end at n; `keep` (ROWS,) masks the rows an earlier chunk already counted."""
    def body(k, acc):
        start = jnp.minimum(k * ROWS, n - ROWS)
        return acc + fn(start, start + jnp.arange(ROWS) >= k * ROWS)

    return lax.fori_loop(0, -(-n // ROWS), body, init)


def _weight_grad(x, dy):
    """(..., N, C), (..., N, D) -> (C, D) float32: x^T dy summed over the sites (and any leading axes)."""
    n = x.shape[-2]
    if n <= ROWS:
        return _einsum("...sc,...sd->cd", x, dy)

    def chunk(start, keep):
        xs, ds = (lax.dynamic_slice_in_dim(a, start, ROWS, axis=a.ndim - 2) for a in (x, dy))
        return _einsum("...sc,...sd->cd", xs, jnp.where(keep[:, None], ds, 0))

    return _sum_row_chunks(n, chunk, jnp.zeros((x.shape[-1], dy.shape[-1]), _F32))


_pair_subm = P.make_pair_conv(_einsum, _weight_grad)


def _pad_zero_row(x):
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)], axis=0)


CHUNK = 4096
"""Output sites per step of the tap conv's scan (measured on CPU: benchmarks/README.md)."""


def _chunks(table, n_in):
    """(N_out, T) table -> (steps, chunk, T), padded with the zero row index n_in."""
    n_out, taps = table.shape
    chunk = min(CHUNK, n_out)
    m = -(-n_out // chunk) * chunk
    return jnp.concatenate([table, jnp.full((m - n_out, taps), n_in, table.dtype)]).reshape(-1, chunk, taps)


def _tap_conv(x, table, w):
    """(N_in, C), (N_out, T) int, (T, C, D) -> (N_out, D) float32.

    Scan over chunks of output sites: gather the chunk's T neighbour rows side by side, one
    (chunk, T*C) @ (T*C, D) matmul. One long contraction beats T thin ones (see module docstring)."""
    n_out, taps = table.shape
    xp = _pad_zero_row(x)
    wf = w.reshape(taps * x.shape[1], w.shape[2])

    def body(_, idx):
        return None, _dot(xp[idx].reshape(idx.shape[0], -1), wf)

    return lax.scan(body, None, _chunks(table, x.shape[0]))[1].reshape(-1, w.shape[2])[:n_out]


def _tap_weight_grad(x, table, dy):
    """d(tap conv)/dw: (T, C, D) float32, dw[t] = x[table[:, t]]^T @ dy, summed chunk by chunk in order."""
    n_out, taps = table.shape
    xp = _pad_zero_row(x)
    tb = _chunks(table, x.shape[0])
    dyc = jnp.concatenate([dy, jnp.zeros((tb.size // taps - n_out, dy.shape[1]), dy.dtype)])
    dyc = dyc.reshape(tb.shape[0], tb.shape[1], -1)

    def body(acc, chunk):
        idx, g = chunk
        return acc + _dot(xp[idx].reshape(idx.shape[0], -1).T, g), None

    init = jnp.zeros((taps * x.shape[1], dy.shape[1]), _F32)
    return lax.scan(body, init, (tb, dyc))[0].reshape(taps, x.shape[1], dy.shape[1])


def _slot_conv(x, slot, w):
    """(N_in, C), (N_out,) int, (8, C, D) -> (N_out, D) float32: all 8 products per coarse site, one gather."""
    z = _einsum("qc,kcd->qkd", x, w)
    return _pad_zero_row(z.reshape(-1, w.shape[2]))[slot]


def _slot_weight_grad(x, children, dy):
    """d(slot conv)/dw: (8, C, D) float32, dw[c] = x^T @ dy[children[:, c]], chunk by chunk of coarse sites
    (never the whole (N_{l+1}, 8, D) gathered block and its transpose)."""
    n, dyp = x.shape[0], _pad_zero_row(dy)
    if n <= ROWS:
        return _einsum("qc,qkd->kcd", x, dyp[children])

    def chunk(start, keep):
        xs = lax.dynamic_slice_in_dim(x, start, ROWS)
        rows = jnp.where(keep[:, None], lax.dynamic_slice_in_dim(children, start, ROWS), dy.shape[0])
        return _einsum("qc,qkd->kcd", xs, dyp[rows])

    return _sum_row_chunks(n, chunk, jnp.zeros((8, x.shape[1], dy.shape[1]), _F32))


def _out_dtype(x, w):
    return jnp.result_type(x.dtype, w.dtype)


def _swap(w):
    return jnp.swapaxes(w, 1, 2)


@jax.custom_vjp
def _pointwise(x, w, mask):
    """k = 1 subm conv: a per-site matmul, 0 at padding rows; (N, C) or (B, N, C)."""
    return jnp.where(mask[..., None], _dot(x, w[0]), 0).astype(_out_dtype(x, w))


def _pointwise_fwd(x, w, mask):
    return _pointwise(x, w, mask), (x, w, mask)


def _pointwise_bwd(res, dy):
    x, w, mask = res
    dy = jnp.where(mask[..., None], dy, 0)
    return _dot(dy, w[0].T).astype(x.dtype), _weight_grad(x, dy)[None].astype(w.dtype), None


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


@jax.custom_vjp
def _subm(x, w, nbr):
    return _tap_conv(x, nbr, w).astype(_out_dtype(x, w))


def _subm_fwd(x, w, nbr):
    return _subm(x, w, nbr), (x, w, nbr)


def _subm_bwd(res, dy):
    x, w, nbr = res
    dx = _tap_conv(dy, nbr, _swap(w[::-1]))
    dw = _tap_weight_grad(x, nbr, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype), None


_subm.defvjp(_subm_fwd, _subm_bwd)


@jax.custom_vjp
def _down(x, w, children, parent_slot):
    return _tap_conv(x, children, w).astype(_out_dtype(x, w))


def _down_fwd(x, w, children, parent_slot):
    return _down(x, w, children, parent_slot), (x, w, children, parent_slot)


def _down_bwd(res, dy):
    x, w, children, parent_slot = res
    dx = _slot_conv(dy, parent_slot, _swap(w))
    dw = _tap_weight_grad(x, children, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_down.defvjp(_down_fwd, _down_bwd)


@jax.custom_vjp
def _up(x, w, children, parent_slot):
    return _slot_conv(x, parent_slot, w).astype(_out_dtype(x, w))


def _up_fwd(x, w, children, parent_slot):
    return _up(x, w, children, parent_slot), (x, w, children, parent_slot)


def _up_bwd(res, dy):
    x, w, children, parent_slot = res
    dx = _tap_conv(dy, children, _swap(w))
    dw = _slot_weight_grad(x, children, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_up.defvjp(_up_fwd, _up_bwd)


def _check(name, x, w, n, taps):
    if x.ndim not in (2, 3) or x.shape[-2] != n:
        raise ValueError(f"{name}: features {x.shape} do not match the level's {n} sites (expected ({n}, C) "
                         f"or (B, {n}, C))")
    if w.ndim != 3 or w.shape[1] != x.shape[-1] or (taps is not None and w.shape[0] != taps):
        want = f"({taps}, {x.shape[-1]}, D)" if taps else f"(k**3, {x.shape[-1]}, D)"
        raise ValueError(f"{name}: weight shape {w.shape} does not fit features {x.shape}; expected {want}")


def _level(name, h, level, coarser):
    top = len(h.masks) - (2 if coarser else 1)
    if not 0 <= level <= top:
        raise ValueError(f"{name}: level {level} out of range [0, {top}] for a {len(h.masks)}-level hierarchy")


def _per_sample(fn, x, h):
    """Run a one-sample conv on x (N, C) with an unbatched hierarchy, or vmap it over (B, N, C)."""
    return fn(x, h) if x.ndim == 2 else jax.vmap(fn)(x, h)


def subm_conv(x, h, level, w):
    """Submanifold conv at `level`: x (N_l, C), w (k**3, C, D) with odd k -> (N_l, D), sites unchanged.

    out[p] = sum over taps delta with p + delta a site of w[tap(delta)]^T x[p + delta] (cross-correlation,
    tap order of keys.offsets). k = 1 is a per-site matmul; other k need a table built by the HierarchySpec;
    3x3x3 convs use the exact-pair form where the spec built pair lists for the level (`pairs.py`).
    Batched: x (B, N_l, C) with the batched hierarchy of `jax.vmap(build_hierarchy)`.
    """
    _level("subm_conv", h, level, coarser=False)
    _check("subm_conv", x, w, h.masks[level].shape[-1], None)
    taps = w.shape[0]
    mask = h.masks[level]
    if taps == 1:
        return _pointwise(x, w, mask)
    if taps == 27 and h.pairs[level] is not None:
        if x.ndim == 3:
            return _pair_subm(x, w, mask, h.pairs[level])
        one = jax.tree_util.tree_map(lambda a: a[None], (mask, h.pairs[level]))
        return _pair_subm(x[None], w, *one)[0]
    tables = h.nbr[level]
    if not any(t.shape[-1] == taps for t in tables.values()):
        have = sorted(round(t.shape[-1] ** (1 / 3)) for t in tables.values())
        raise ValueError(f"subm_conv: no neighbour table for {taps} taps at level {level}; the HierarchySpec "
                         f"built kernel sizes {have} there (add it to HierarchySpec.kernel_sizes)")
    k = round(taps ** (1 / 3))
    return _per_sample(lambda xi, hi: _subm(xi, w, hi.nbr[level][k]), x, h)


def down_conv(x, h, level, w):
    """Stride-2 conv (kernel 2) from `level` to `level + 1`: x (N_l, C), w (8, C, D) -> (N_{l+1}, D).

    out[q] = sum over sites p with floor(p / 2) = q of w[4 cx + 2 cy + cz]^T x[p], c = p - 2 q. Batched as
    subm_conv."""
    _level("down_conv", h, level, coarser=True)
    _check("down_conv", x, w, h.masks[level].shape[-1], 8)
    return _per_sample(lambda xi, hi: _down(xi, w, hi.children[level], hi.parent_slot[level]), x, h)


def up_conv(x, h, level, w):
    """Inverse of down_conv(level): x (N_{l+1}, C), w (8, C, D) -> (N_l, D) on level l's exact sites.

    out[p] = w[4 cx + 2 cy + cz]^T x[floor(p / 2)], c = p - 2 floor(p / 2). Batched as subm_conv."""
    _level("up_conv", h, level, coarser=True)
    _check("up_conv", x, w, h.masks[level + 1].shape[-1], 8)
    return _per_sample(lambda xi, hi: _up(xi, w, hi.children[level], hi.parent_slot[level]), x, h)
