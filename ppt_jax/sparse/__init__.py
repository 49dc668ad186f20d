"""Sparse voxel engine in pure JAX: per-sample voxel hierarchies and spconv-compatible convolutions.

    spec = HierarchySpec(capacities=(N0, N1, N2, N3, N4))
    h = build_hierarchy(grid_coord, mask, spec)     # under jit; jax.vmap for batches
    check_hierarchy(h)                              # host side: raises on dropped / out-of-bound sites
    y = subm_conv(x, h, level, w); down_conv(...); up_conv(...)
"""

from ppt_jax.sparse.conv import down_conv, subm_conv, up_conv
from ppt_jax.sparse.hierarchy import Hierarchy, HierarchySpec, build_hierarchy, check_hierarchy
from ppt_jax.sparse.keys import GRID_BOUND

__all__ = ["GRID_BOUND", "Hierarchy", "HierarchySpec", "build_hierarchy", "check_hierarchy",
           "down_conv", "subm_conv", "up_conv"]
