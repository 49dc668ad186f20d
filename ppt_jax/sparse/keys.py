"""Integer voxel keys and kernel offsets shared by the hierarchy builder and the convolutions.

A site's key is one int32 that orders sites lexicographically by (x, y, z), so that a sorted key array
answers "is there a site at p + delta?" with a binary search. Coordinates are shifted by `PAD` so that
the neighbour coordinates of every in-bound site (offsets down to -PAD) still have non-negative keys.
"""

import numpy as np
import jax.numpy as jnp

GRID_BOUND = 1280
"""Voxel coordinates must lie in [0, GRID_BOUND) on each axis (25.6 m at 2 cm voxels).

The bound is what fits one int32 key: (GRID_BOUND + 2 * PAD)**3 < 2**31 - 1. Sites outside it are not
built into the hierarchy; they are counted in `Hierarchy.out_of_bound` and `check_hierarchy` raises."""

PAD = 2
"""Largest neighbour offset a key can express: submanifold kernels up to 5x5x5."""

MAX_KERNEL = 2 * PAD + 1
_SIDE = GRID_BOUND + 2 * PAD
SENTINEL = np.int32(np.iinfo(np.int32).max)
"""Key of padding sites: larger than every real key, so padding sorts last and is never found."""

assert _SIDE**3 < int(SENTINEL), "GRID_BOUND too large for int32 keys"


def in_bound(coords):
    """(N, 3) int32 -> (N,) bool: every coordinate in [0, GRID_BOUND)."""
    return jnp.all((coords >= 0) & (coords < GRID_BOUND), axis=-1)


def encode(coords):
    """(..., 3) int32 in-bound coordinates -> (...,) int32 keys (lexicographic order of (x, y, z))."""
    c = coords.astype(jnp.int32) + PAD
    return (c[..., 0] * _SIDE + c[..., 1]) * _SIDE + c[..., 2]


def offsets(k):
    """(k**3, 3) int32 numpy offsets of a centred k x k x k kernel, in tap order.

    tap = (dx + r) * k * k + (dy + r) * k + (dz + r) with r = k // 2 (spconv's (kx, ky, kz) order)."""
    r = k // 2
    d = np.arange(-r, r + 1, dtype=np.int32)
    return np.stack(np.meshgrid(d, d, d, indexing="ij"), axis=-1).reshape(-1, 3)


def key_offsets(k):
    """(k**3,) int32 numpy: key(p + delta) - key(p) for each tap (keys are linear in coordinates)."""
    o = offsets(k).astype(np.int64)
    return ((o[:, 0] * _SIDE + o[:, 1]) * _SIDE + o[:, 2]).astype(np.int32)
