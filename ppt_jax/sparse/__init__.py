"""Sparse voxel engine in pure JAX: per-sample voxel hierarchies and spconv-compatible convolutions.

    spec = sizing.spec_from_stats(sizing.measure(crops), N0)   # or HierarchySpec(capacities=..., ...)
    h = build_hierarchy(grid_coord, mask, spec)     # under jit; jax.vmap for batches
    check_hierarchy(h)                              # host side: raises on dropped sites / pairs, out of bound
    y = subm_conv(x, h, level, w); down_conv(...); up_conv(...)   # (N, C) or batched (B, N, C)

Errors on data cannot be raised inside jit: the hierarchy counts them (`dropped_sites`, `dropped_pairs`,
`out_of_bound`) and `check_hierarchy` turns the counts into a ValueError naming the problem and the
setting to change. Everything is deterministic: sorts are stable, scatters write unique indices, the
dense form's backward passes are gathers and the pair form accumulates chunk by chunk in a fixed order
into distinct rows, so outputs and gradients are bitwise reproducible.
"""

from ppt_jax.sparse import pairs, sizing
from ppt_jax.sparse.conv import down_conv, subm_conv, up_conv
from ppt_jax.sparse.hierarchy import Hierarchy, HierarchySpec, build_hierarchy, check_hierarchy
from ppt_jax.sparse.keys import GRID_BOUND

__all__ = ["GRID_BOUND", "Hierarchy", "HierarchySpec", "build_hierarchy", "check_hierarchy",
           "down_conv", "pairs", "sizing", "subm_conv", "up_conv"]
