"""Space-filling-curve serialization of a sample's sites (Point Transformer V3's point order).

Four orders, as the reference names them: "z" (Morton: interleaved x, y, z bits, x most significant),
"z-trans" (the same with x and y swapped), "hilbert" (Skilling's transpose algorithm, the curve the
reference uses) and "hilbert-trans". Codes come from integer grid coordinates at a depth `d` (bits per
axis, at most MAX_DEPTH): the reference uses d = bit_length(max coordinate + 1) at the finest level and
d - l at level l of its stride-2 pooling; a coarse site's code is its children's code >> 3 for every
order, so the order of level l is the curve of depth d - l on the level's coordinates.

Everything is per sample (vmap for batches) with static shapes: the reference puts the batch index in
the code's high bits, which only keeps samples apart. The Z-order code does not depend on `d`; the
Hilbert code does (the curve's orientation changes with its depth), so `d` is an argument.

A code has 3 * MAX_DEPTH = 48 bits: it is returned as two int32 words (high 24 bits, low 24 bits) and
sorted lexicographically, since JAX's default integers are 32 bits.
"""

import jax
import jax.numpy as jnp
from jax import lax

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16
_WORD_BITS = 8          # coordinate bits per code word (3 * 8 = 24 code bits)
_PADDING_CODE = jnp.iinfo(jnp.int32).max


def depth(coords, mask):
    """() int32: bit_length(max coordinate of the real sites + 1), the reference's serialization depth."""
    top = jnp.max(jnp.where(mask[:, None], coords, 0)).astype(jnp.int32)
    return (32 - lax.clz(top + 1)).astype(jnp.int32)


def _hilbert_transpose(x, y, z, d):
    """Skilling's AxesToTranspose with the Gray decoding, for coordinates < 2**d (d traced, <= MAX_DEPTH).

    Bits at or above d are zero and stay zero; the loop runs over the static MAX_DEPTH bits, most
    significant first, and only changes bits below d (leading zero bits would otherwise swap axes)."""

    def step(k, axes):
        q = MAX_DEPTH - 1 - k
        bit, low = jnp.left_shift(1, q), jnp.left_shift(1, q) - 1
        active = q < d
        a0, a1, a2 = axes
        a0 = jnp.where(active & ((a0 & bit) != 0), a0 ^ low, a0)
        out = [a0]
        for ai in (a1, a2):
            on = (ai & bit) != 0
            t = (a0 ^ ai) & low
            a0 = jnp.where(active & on, a0 ^ low, jnp.where(active & ~on, a0 ^ t, a0))
            out.append(jnp.where(active & ~on, ai ^ t, ai))
            out[0] = a0
        return tuple(out)

    a0, a1, a2 = lax.fori_loop(0, MAX_DEPTH - 1, step, (x, y, z))
    # Gray decoding of the interleaved bit stream (a prefix XOR, most significant bit first): within a
    # bit, a prefix XOR over the axes; across bits, every lower bit flips by the XOR of the higher bits.
    a1 = a1 ^ a0
    a2 = a2 ^ a1
    t = a2 >> 1
    for shift in (1, 2, 4, 8):
        t = t ^ (t >> shift)
    return a0 ^ t, a1 ^ t, a2 ^ t


def _spread(v):
    """Bits 0..7 of v to bits 0, 3, 6, ..., 21."""
    v = v & 0xFF
    v = (v | (v << 8)) & 0x0300F00F
    v = (v | (v << 4)) & 0x030C30C3
    return (v | (v << 2)) & 0x09249249


def _interleave(x, y, z, first_bit):
    """24-bit word of coordinate bits [first_bit, first_bit + 8): bit 3i+2 = x, 3i+1 = y, 3i = z."""
    return (_spread(x >> first_bit) << 2) | (_spread(y >> first_bit) << 1) | _spread(z >> first_bit)


def encode(coords, d, order):
    """(N, 3) non-negative int32 coordinates < 2**d -> (N, 2) int32 code words (high, low).

    The 48-bit code is high * 2**24 + low (equal to the reference's code without its batch bits)."""
    return encode_orders(coords, d, (order,))[0]


def encode_orders(coords, d, names=ORDERS):
    """(len(names), N, 2) int32 codes of several orders at once (one Hilbert transform for both of
    its orders: the "-trans" orders run on the (y, x, z) copy of the coordinates)."""
    unknown = [o for o in names if o not in ORDERS]
    if unknown or not names:
        raise ValueError(f"serialization orders must be a non-empty subset of {ORDERS}, got {names!r}")
    c = jnp.asarray(coords, jnp.int32)
    axes = jnp.stack([c, c[:, jnp.array([1, 0, 2])]])                     # (2, N, 3): plain, trans
    words = {}
    if any(o.startswith("z") for o in names):
        words["z"] = jnp.stack([_interleave(*jnp.moveaxis(axes, -1, 0), b) for b in (_WORD_BITS, 0)], -1)
    if any(o.startswith("hilbert") for o in names):
        h = _hilbert_transpose(*jnp.moveaxis(axes, -1, 0), jnp.asarray(d, jnp.int32))
        words["hilbert"] = jnp.stack([_interleave(*h, b) for b in (_WORD_BITS, 0)], -1)
    return jnp.stack([words[o.split("-")[0]][int(o.endswith("-trans"))] for o in names])


def sort(codes, mask):
    """(N,) int32 site indices in curve order: real sites first, then padding sites in index order."""
    n = codes.shape[0]
    high = jnp.where(mask, codes[:, 0], _PADDING_CODE)
    low = jnp.where(mask, codes[:, 1], 0)
    return lax.sort((high, low, jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def inverse(perm):
    """(N,) int32: position of each site in `perm` (perm[inverse(perm)[i]] == i)."""
    n = perm.shape[0]
    return jnp.zeros((n,), jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)


def orders(coords, mask, d, names=ORDERS):
    """(len(names), N) int32: the sites of one sample in each order's curve order, at depth d."""
    return jax.vmap(sort, in_axes=(0, None))(encode_orders(coords, d, names), mask)

