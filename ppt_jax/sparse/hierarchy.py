"""Per-sample voxel hierarchy: sites of every U-Net level and the kernel maps between them.

Built once per batch under `jax.jit` (batches via `jax.vmap`) and reused by every conv at a level, like
spconv's `indice_key`. All shapes are static: level l holds `spec.capacities[l]` sites, real sites
first only at coarse levels (level 0 keeps the input order and padding rows wherever they are).

Kernel maps (every "missing" entry is the level's site count N_l, i.e. the zero row the convs append):
  nbr[l][k]       (N_l, k**3)   submanifold neighbour of each site per tap (keys.offsets order)
  children[l]     (N_{l+1}, 8)  level-l site of each level-(l+1) site per child tap 4*cx + 2*cy + cz
  parent_slot[l]  (N_l,)        parent * 8 + child tap of each level-l site (missing: N_{l+1} * 8)

Level 0 is sorted by key once; each coarser level comes out of the sort that deduplicates floor(p / 2),
already in key order. Neighbour tables: the coarsest level binary-searches every neighbour key
(`jnp.searchsorted`, method `HierarchySpec.search_method`; 'scan' is the fastest on CPU); each finer
level is derived from its parents' 3x3x3 table and the child maps by two gathers (`_derive`), which
replaces 12.5 M searches for the 5x5x5 table of 100k sites. `neighbour_maps="searched"` searches
every level instead.

Sizing capacities: level l+1 holds unique(floor(p / 2)) of level l. Indoor surfaces at 2 cm shrink by
about 4x per level (100,000 / 25,335 / 6,239 / 1,495 / 331 voxels in a ScanNet crop; spec section 14);
a filled volume shrinks by up to 8x, a thin line by only 2x. Size each level for the worst scene of the
data with a margin, and watch `dropped_sites`: a non-zero entry means level l kept only the
`capacities[l]` sites with the smallest keys; their children lose their parent (down conv ignores them,
up conv gives them zeros and, with derived maps, they have no neighbours at level l - 1 either). Nothing is
dropped silently: `check_hierarchy` raises on any loss.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ppt_jax.sparse import keys as K
from ppt_jax.sparse import pairs as P

SEARCH_METHODS = ("scan", "scan_unrolled", "sort", "compare_all")
NEIGHBOUR_MAPS = ("derived", "searched")


def _default_kernels(levels):
    return ((5, 3),) + ((3,),) * (levels - 1)


@dataclasses.dataclass(frozen=True)
class HierarchySpec:
    """Static description of a hierarchy (hashable: safe as a `jax.jit` static argument).

    capacities: sites per level, level 0 first (= the padded input size N0).
    kernel_sizes: per level, the odd submanifold kernel sizes that need neighbour tables (k=1 needs
      none). Default: (5, 3) at level 0 (SpUNet stem and blocks), (3,) at coarser levels.
    neighbour_maps: "derived" (default) searches keys only at the coarsest level and builds each finer
      level's tables from its parents' (fast; exact unless the parent level dropped sites, in which case
      sites without a parent have no neighbours either); "searched" binary-searches every level (exact
      spconv semantics over the kept sites even on overflow, slower).
    search_method: `jnp.searchsorted` method for the key lookups.
    pair_capacities: per level, the number of 3x3x3 pairs of the taps t < 13 to keep in whole chunks (a
      multiple of that level's `pair_chunks` entry) for the exact-pair conv form (`ppt_jax.sparse.pairs`;
      each tap's last partial chunk goes to a tail list of fixed size), or 0 for the dense 27-tap form;
      None (default) = dense everywhere. Pairs beyond it are counted in `dropped_pairs`.
    pair_chunks: per level, the pairs per chunk of the exact-pair form (one matmul each); None picks
      `default_pair_chunk(capacities[l])`.
    """

    capacities: tuple
    kernel_sizes: tuple = None
    neighbour_maps: str = "derived"
    search_method: str = "scan"
    pair_capacities: tuple = None
    pair_chunks: tuple = None

    def __post_init__(self):
        caps = tuple(int(c) for c in self.capacities)
        if not caps or any(c < 1 for c in caps):
            raise ValueError(f"HierarchySpec.capacities must be positive site counts, got {self.capacities}")
        kernels = _default_kernels(len(caps)) if self.kernel_sizes is None else self.kernel_sizes
        kernels = tuple(tuple(sorted({int(k) for k in ks}, reverse=True)) for ks in kernels)
        if len(kernels) != len(caps):
            raise ValueError(f"HierarchySpec.kernel_sizes has {len(kernels)} levels, capacities has {len(caps)}")
        for ks in kernels:
            for k in ks:
                if k < 3 or k % 2 == 0 or k > K.MAX_KERNEL:
                    raise ValueError(f"HierarchySpec.kernel_sizes: {k} is not an odd size in [3, {K.MAX_KERNEL}]"
                                     " (k=1 convs need no table)")
        if self.neighbour_maps not in NEIGHBOUR_MAPS:
            raise ValueError(f"HierarchySpec.neighbour_maps must be one of {NEIGHBOUR_MAPS}, "
                             f"got {self.neighbour_maps!r}")
        if self.search_method not in SEARCH_METHODS:
            raise ValueError(f"HierarchySpec.search_method must be one of {SEARCH_METHODS}, got {self.search_method!r}")
        pcaps = (0,) * len(caps) if self.pair_capacities is None else tuple(int(p or 0) for p in self.pair_capacities)
        chunks = (tuple(default_pair_chunk(c) for c in caps) if self.pair_chunks is None
                  else tuple(int(c) for c in self.pair_chunks))
        if len(pcaps) != len(caps) or len(chunks) != len(caps):
            raise ValueError(f"HierarchySpec.pair_capacities / pair_chunks need {len(caps)} levels, got "
                             f"{self.pair_capacities} / {self.pair_chunks}")
        for level, (p, s) in enumerate(zip(pcaps, chunks)):
            if s < 1 or p < 0 or p % s:
                raise ValueError(f"HierarchySpec.pair_capacities[{level}] = {p} must be a non-negative multiple "
                                 f"of pair_chunks[{level}] = {s}")
            if p and 3 not in kernels[level]:
                raise ValueError(f"HierarchySpec.pair_capacities[{level}] is set but level {level} builds no "
                                 f"3x3x3 table (kernel_sizes {kernels[level]})")
        object.__setattr__(self, "capacities", caps)
        object.__setattr__(self, "kernel_sizes", kernels)
        object.__setattr__(self, "pair_capacities", pcaps)
        object.__setattr__(self, "pair_chunks", chunks)

    @property
    def levels(self):
        return len(self.capacities)

    def tables(self, level):
        """Kernel sizes whose tables level `level` holds, largest first (derived maps need 3 at every
        level above one that has tables)."""
        ks = set(self.kernel_sizes[level])
        if self.neighbour_maps == "derived" and level > 0 and any(self.tables(level - 1)):
            ks.add(3)
        return tuple(sorted(ks, reverse=True))


def default_pair_chunk(sites):
    """Pairs per main chunk of the exact-pair form: ~sites / 6, a power of two in [128, 8192]. Every chunk
    is one loop step of a few small ops whose fixed cost dominates small chunks: the 100k train step ran
    6 % faster than with ~sites / 24 (benchmarks/README.md); each tap's remainder goes to smaller tail
    chunks (`pairs.TAIL_SPLIT`), so large chunks pad little."""
    return int(np.clip(2 ** np.round(np.log2(max(sites, 1) / 6)), 128, 8192))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Sites and kernel maps of one sample (a pytree; `jax.vmap` of the builder gives a batch).

    masks[l] (N_l,) bool, coords[l] (N_l, 3) int32 (0 at padding), nbr[l] {k: (N_l, k**3) int32},
    children[l] / parent_slot[l] for l < L (see module docstring), dropped_sites (L+1,) int32: sites lost
    per level (level 0: masked input sites that are out of bound or repeat an earlier site's
    coordinates), out_of_bound () int32: masked input sites outside [0, GRID_BOUND); pairs[l] the
    (main, tail) `pairs.PairList`s where the spec asks for the exact-pair form at level l, else None;
    dropped_pairs (L,) int32: pairs beyond `pair_capacities[l]`.
    """

    masks: tuple
    coords: tuple
    nbr: tuple
    children: tuple
    parent_slot: tuple
    dropped_sites: jax.Array
    out_of_bound: jax.Array
    pairs: tuple
    dropped_pairs: jax.Array


def _lookup(sorted_keys, perm, site_keys, valid, k, method):
    """(N, k**3) index of the site at p + delta for every site p and tap delta; N where absent."""
    n = sorted_keys.shape[0]
    base = jnp.where(valid, site_keys, 0)
    query = base[:, None] + jnp.asarray(K.key_offsets(k))[None, :]
    idx = jnp.searchsorted(sorted_keys, query.reshape(-1), method=method).reshape(query.shape)
    idx = jnp.minimum(idx, n - 1)
    found = (sorted_keys[idx] == query) & valid[:, None]
    return jnp.where(found, perm[idx], n).astype(jnp.int32)


def _with_subsets(table, big, smaller):
    """{k: table} from the largest kernel's table: a smaller centred kernel's taps are a column subset."""
    tables = {big: table}
    for k in smaller:
        r = (big - k) // 2
        cols = np.arange(big**3).reshape(big, big, big)[r:big - r, r:big - r, r:big - r].reshape(-1)
        tables[k] = table[:, cols]
    return tables


def _child_tap(coords):
    c = coords & 1
    return c[:, 0] * 4 + c[:, 1] * 2 + c[:, 2]


def _downsample(coords, valid, capacity):
    """Unique parents floor(p / 2) of the valid sites, in key order, and the maps between the levels."""
    n = coords.shape[0]
    pc = coords >> 1
    pkeys = jnp.where(valid, K.encode(pc), K.SENTINEL)
    order = jnp.argsort(pkeys, stable=True)
    psk = pkeys[order]
    real = psk != K.SENTINEL
    is_new = real & jnp.concatenate([jnp.ones((1,), bool), psk[1:] != psk[:-1]])
    uid = jnp.cumsum(is_new) - 1
    n_true = jnp.sum(is_new, dtype=jnp.int32)
    kept = real & (uid < capacity)

    first = jnp.nonzero(is_new, size=capacity, fill_value=0)[0]
    cmask = jnp.arange(capacity) < n_true
    ccoords = jnp.where(cmask[:, None], pc[order[first]], 0)
    csorted = jnp.where(cmask, psk[first], K.SENTINEL)

    slot = jnp.where(kept, uid * 8 + _child_tap(coords)[order], capacity * 8).astype(jnp.int32)
    parent_slot = jnp.zeros((n,), jnp.int32).at[order].set(slot, unique_indices=True)
    children = jnp.full((capacity * 8,), n, jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
    dropped = jnp.maximum(n_true - capacity, 0)
    return ccoords, cmask, csorted, children.reshape(capacity, 8), parent_slot, dropped


def _derive(coords, valid, parent_slot, children, parent_nbr, k):
    """(N_l, k**3) neighbour table of level l from level l+1's 3x3x3 table, without any search.

    The neighbour p + delta (|delta| <= 2) of p has parent floor(p / 2) + o with o in {-1, 0, 1}^3 and
    child tap c, both fixed by delta and the parity of p: look up the parent's neighbour o, then its
    child c (octree neighbour construction). Exact whenever level l+1 dropped no site."""
    n, nc = coords.shape[0], children.shape[0]
    bits = np.stack(np.unravel_index(np.arange(8), (2, 2, 2)), axis=-1)
    s = bits[:, None, :] + K.offsets(k)[None, :, :]  # (8 parities, taps, 3)
    o = (s >> 1) + 1
    parent_tap = jnp.asarray((o[..., 0] * 3 + o[..., 1]) * 3 + o[..., 2], jnp.int32)
    child_tap = jnp.asarray(_child_tap(s.reshape(-1, 3)).reshape(s.shape[:2]), jnp.int32)
    parity = _child_tap(coords)
    q = parent_slot // 8  # nc where the site has no parent
    pn = jnp.concatenate([parent_nbr, jnp.full((1, 27), nc, jnp.int32)]).reshape(-1)
    pn = pn[q[:, None] * 27 + parent_tap[parity]]
    ch = jnp.concatenate([children, jnp.full((1, 8), n, jnp.int32)]).reshape(-1)
    return jnp.where(valid[:, None], ch[pn * 8 + child_tap[parity]], n)


def build_hierarchy(grid_coord, mask, spec):
    """Sites and kernel maps of every level for one sample.

    grid_coord (N0, 3) int32 voxel coordinates in [0, GRID_BOUND), mask (N0,) bool (True at real sites),
    spec a HierarchySpec with capacities[0] == N0. Call under jit (spec static) and vmap for batches.
    """
    n0 = spec.capacities[0]
    if grid_coord.shape != (n0, 3) or mask.shape != (n0,):
        raise ValueError(f"build_hierarchy: grid_coord {grid_coord.shape} / mask {mask.shape} do not match "
                         f"HierarchySpec.capacities[0] = {n0} (expected ({n0}, 3) and ({n0},))")
    if not jnp.issubdtype(grid_coord.dtype, jnp.integer):
        raise ValueError(f"build_hierarchy: grid_coord must be integer voxel coordinates, got {grid_coord.dtype}")
    coords = grid_coord.astype(jnp.int32)
    mask = mask.astype(bool)
    inb = K.in_bound(coords)
    out_of_bound = jnp.sum(mask & ~inb, dtype=jnp.int32)
    valid = mask & inb
    site_keys = jnp.where(valid, K.encode(coords), K.SENTINEL)
    perm = jnp.argsort(site_keys, stable=True)
    sorted_keys = site_keys[perm]
    dup_sorted = jnp.concatenate([jnp.zeros((1,), bool),
                                  (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_keys[1:] != K.SENTINEL)])
    # A stable sort puts the first occurrence first; searchsorted (side='left') finds it, never a repeat.
    valid = valid & ~jnp.zeros((n0,), bool).at[perm].set(dup_sorted, unique_indices=True)
    coords = jnp.where(valid[:, None], coords, 0)

    masks, all_coords, children, parent_slot = [valid], [coords], [], []
    search = [(sorted_keys, perm, site_keys)]  # per level: what a key lookup needs
    dropped = [jnp.sum(mask, dtype=jnp.int32) - jnp.sum(valid, dtype=jnp.int32)]
    for level in range(1, spec.levels):
        coords, valid, sorted_keys, ch, ps, drop = _downsample(coords, valid, spec.capacities[level])
        search.append((sorted_keys, jnp.arange(spec.capacities[level], dtype=jnp.int32), sorted_keys))
        masks.append(valid)
        all_coords.append(coords)
        children.append(ch)
        parent_slot.append(ps)
        dropped.append(drop)

    nbr = [None] * spec.levels
    for level in reversed(range(spec.levels)):
        kernels = spec.tables(level)
        if not kernels:
            nbr[level] = {}
            continue
        big = kernels[0]
        if spec.neighbour_maps == "derived" and level + 1 < spec.levels:
            table = _derive(all_coords[level], masks[level], parent_slot[level], children[level],
                            nbr[level + 1][3], big)
        else:
            table = _lookup(*search[level], masks[level], big, spec.search_method)
        nbr[level] = _with_subsets(table, big, kernels[1:])
    pair_lists, dropped_pairs = [], []
    for level in range(spec.levels):
        cap = spec.pair_capacities[level]
        built = P.build_pairs(nbr[level][3], cap, spec.pair_chunks[level]) if cap else (None, jnp.int32(0))
        pair_lists.append(built[0])
        dropped_pairs.append(built[1])
    return Hierarchy(masks=tuple(masks), coords=tuple(all_coords), nbr=tuple(nbr), children=tuple(children),
                     parent_slot=tuple(parent_slot), dropped_sites=jnp.stack(dropped).astype(jnp.int32),
                     out_of_bound=out_of_bound, pairs=tuple(pair_lists),
                     dropped_pairs=jnp.stack(dropped_pairs).astype(jnp.int32))


def check_hierarchy(h, what="batch"):
    """Host-side check (outside jit): raise ValueError if any sample lost sites; works batched or not."""
    oob = int(np.sum(np.asarray(h.out_of_bound)))
    if oob:
        raise ValueError(f"{what}: {oob} voxel(s) have coordinates outside [0, {K.GRID_BOUND}) "
                         f"(sparse.GRID_BOUND); crop the scene or use a coarser grid")
    dropped = np.asarray(h.dropped_sites).reshape(-1, len(h.masks)).sum(axis=0)
    if dropped[0]:
        raise ValueError(f"{what}: {int(dropped[0])} input site(s) repeat another site's voxel coordinates")
    for level, n in enumerate(dropped[1:], start=1):
        if n:
            raise ValueError(f"{what}: level {level} needs {int(n)} more site(s) than its capacity "
                             f"{h.masks[level].shape[-1]}; raise HierarchySpec.capacities[{level}]")
    dropped = np.asarray(h.dropped_pairs).reshape(-1, len(h.masks)).sum(axis=0)
    for level, n in enumerate(dropped):
        if n:
            cap = h.pairs[level][0].out.shape[-1]
            raise ValueError(f"{what}: level {level} has {int(n)} more 3x3x3 neighbour pair(s) than its pair "
                             f"capacity {cap}; raise HierarchySpec.pair_capacities[{level}]")
