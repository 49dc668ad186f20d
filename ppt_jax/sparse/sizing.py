"""Static capacities from data: sites and 3x3x3 pairs per level, measured on real crops (host side, numpy).

A HierarchySpec fixes every level's site capacity and, for the exact-pair form, its pair capacity; one
compile serves every batch. Too small a capacity drops sites or pairs (`check_hierarchy` raises), too large
pads every conv. Fractions of the site budget (1, 1/2, 1/4, ...) fit no real scene: a 100k-site indoor crop
at 2 cm has 100000 / 25335 / 6239 / 1495 / 331 sites per level (4x per level, surfaces), so fixed fractions
pad its coarse levels 2-19x. Here the sizes are measured on sample crops of the data itself:

    stats = measure(crops)                        # [(N_i, 3) int voxel coords of each crop], any number
    spec = spec_from_stats(stats, num_sites, form="pairs")

`measure` counts, per crop and level l, the unique sites floor(p / 2**l) and the active 3x3x3 neighbour
pairs of each stored tap t < 13 (`pairs.py`: tap 26 - t mirrors t); `spec_from_stats` takes the largest
over the crops times `margin` for sites (level 0 is the input budget itself) and `pair_margin` for pairs,
and picks each level's pair chunk from the measured pairs (`pair_chunk`). Pair capacities count whole
chunks only: each tap's remainder goes to the tail list, whose size is fixed.
"""

import numpy as np

from ppt_jax.sparse import keys as K
from ppt_jax.sparse import pairs as P
from ppt_jax.sparse.hierarchy import HierarchySpec, default_pair_chunk

LEVELS = 5
FORMS = ("dense", "pairs")
MARGIN = 1.05
"""Site capacity over the largest measured crop. Augmentation (rotation, scaling, elastic distortion), crop
placement and Mix3D move a crop's coarse-level sizes by 15-20 % (coefficient of variation; the largest of
1024 augmented crops of the embedded default lies 6-21 % above the largest of its first 64): a margin that
fits them all pads every step by 15-25 %. The trainer therefore crops the rare row over these capacities
to them (`ppt_jax.data.pipeline.fit_levels`: ~1 % of rows lose a few far sites, counted), and every site
of the margin is paid by every conv and norm."""
PAIR_MARGIN = 1.5
"""Pair capacity over the largest measured crop, at most the 13 pairs per site a level can hold: the convs
loop over real chunks only, so its slack costs index memory, not products, and pairs beyond it are an error
(`check_hierarchy`). Level 0's pairs vary more than its sites: the largest of 1024 augmented crops of the
embedded default held 1.29x the largest of the first 64."""
MULTIPLE = 4
"""Site capacities are rounded up to a multiple of this: at most 3 sites, under 4 % of the smallest levels."""
PRODUCT_PADDING = 0.10
"""Largest share of padded pair products a level's chunk size may leave on the measured crops."""
MIN_PAIR_CHUNK = 8


def _round_up(n, m):
    return int(-(-int(n) // m) * m)


def _tap_pairs(sites):
    """(13,) active 3x3x3 neighbour pairs of each stored tap t < 13 among unique sites (N, 3)."""
    keys = np.sort(np.asarray(K.encode(sites), np.int64))
    counts = []
    for off in K.key_offsets(3)[P.HALF]:
        q = keys + int(off)
        idx = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        counts.append(int(np.sum(keys[idx] == q)))
    return counts


def measure(crops, levels=LEVELS):
    """{'sites': (crops, levels), 'pairs': (crops, levels), 'tap_pairs': (crops, levels, 13)} int arrays for
    the voxel coords of each crop; 'pairs' are the stored pairs (taps t < 13), half the off-centre ones."""
    sites, taps = [], []
    for coords in crops:
        coords = np.asarray(coords, np.int32).reshape(-1, 3)
        if not len(coords):                      # an empty row of a padded batch needs nothing
            sites.append([0] * levels)
            taps.append([[0] * len(P.HALF)] * levels)
            continue
        # Non-negative keys; a shift by a multiple of 2**(levels - 1) leaves every level's sites as they are.
        coords = coords - (coords.min(axis=0) >> (levels - 1) << (levels - 1))
        level_sites = [np.unique(coords >> level, axis=0) for level in range(levels)]
        sites.append([len(s) for s in level_sites])
        taps.append([_tap_pairs(s) for s in level_sites])
    taps = np.asarray(taps, np.int64).reshape(len(sites), levels, len(P.HALF))
    return {"sites": np.asarray(sites, np.int64).reshape(-1, levels), "pairs": taps.sum(-1), "tap_pairs": taps}


def pair_chunk(tap_pairs, sites, padding=PRODUCT_PADDING):
    """Pairs per main chunk for a level of `sites` capacity whose measured crops hold `tap_pairs` (crops, 13)
    pairs per stored tap: `default_pair_chunk(sites)` (few, large loop steps), halved while the products the
    convs compute over all those crops (`pairs.products`) pad more than `padding` beyond their pairs, down
    to MIN_PAIR_CHUNK. A coarse level holds few pairs per tap (~50 at level 4 of an 8192-site crop at 5 cm),
    below one default chunk: smaller chunks then pad less in about as many loop steps."""
    tap_pairs = np.asarray(tap_pairs, np.int64)
    need, chunk = int(tap_pairs.sum()), default_pair_chunk(sites)
    while need and chunk > MIN_PAIR_CHUNK and 1 - need / P.products(tap_pairs, chunk).sum() > padding:
        chunk //= 2
    return chunk


def spec_from_stats(stats, num_sites, form="pairs", margin=MARGIN, pair_levels=None,
                    search_method="scan", scale_to_budget=True, multiple=MULTIPLE, pair_margin=PAIR_MARGIN):
    """HierarchySpec for crops like the measured ones with a level-0 budget of `num_sites`.

    scale_to_budget: training crops smaller than the budget stand for crops that fill it, so coarse levels
    are scaled by budget / largest measured level 0; off for rows that are the exact inputs (prediction),
    whose capacities are then the largest need times `margin`, rounded up to `multiple` sites.

    form "pairs" builds pair lists at `pair_levels` (default: every level). On CPU the exact-pair form pays
    at every level of an indoor crop, also at the coarse ones where 15 of 27 taps are active
    (benchmarks/README.md); "dense" keeps the 27-tap matmul everywhere."""
    if form not in FORMS:
        raise ValueError(f"config.sparse.conv_form must be one of {FORMS}, got {form!r}")
    sites = np.asarray(stats["sites"]).max(axis=0)
    pairs = np.asarray(stats["pairs"]).max(axis=0)
    levels = len(sites)
    # Coarser levels of a crop smaller than the budget: scale by the budget / measured level-0 ratio.
    scale = num_sites / max(int(sites[0]), 1) if scale_to_budget else 1.0
    caps = [int(num_sites)] + [min(_round_up(s * scale * margin, multiple), int(num_sites))
                               for s in sites[1:]]
    taps = stats.get("tap_pairs")
    chunks = [default_pair_chunk(c) if taps is None else pair_chunk(np.asarray(taps)[:, level], c)
              for level, c in enumerate(caps)]
    pair_caps = []
    for level in range(levels):
        if form != "pairs" or (pair_levels is not None and level not in pair_levels):
            pair_caps.append(0)
            continue
        most = len(P.HALF) * caps[level]
        pair_caps.append(_round_up(min(pairs[level] * scale * pair_margin, most), chunks[level]))
    return HierarchySpec(capacities=tuple(caps), pair_capacities=tuple(pair_caps), pair_chunks=tuple(chunks),
                         search_method=search_method)


def spec_for_batch(grid_coord, mask, form="pairs", margin=MARGIN):
    """Spec sized for one given batch (B, N, 3) / (B, N): benchmarks and tools that see their data."""
    crops = [np.asarray(g)[np.asarray(m)] for g, m in zip(grid_coord, mask)]
    return spec_from_stats(measure(crops), np.asarray(mask).shape[1], form=form, margin=margin)


def padding_report(spec, stats):
    """Per level, against the largest measured crop: site capacity, need and waste = 1 - need / capacity
    (every site costs every conv and norm), and for pair levels the pair capacity and need, with the waste
    of the products the convs compute over all the measured crops (`pairs.products`: chunk padding; the
    capacity's slack beyond it costs index memory only, as the loops run over real chunks). Stats without
    'tap_pairs' (measured before it existed) report no product waste."""
    sites = np.asarray(stats["sites"])
    taps = stats.get("tap_pairs")
    rows = []
    for level, cap in enumerate(spec.capacities):
        pcap, chunk = spec.pair_capacities[level], spec.pair_chunks[level]
        row = {"level": level, "sites": cap, "sites_needed": int(sites[:, level].max()),
               "site_waste": 1 - sites[:, level].max() / cap, "pairs": pcap, "pairs_needed": 0,
               "pair_waste": None}
        if pcap:
            row["pairs_needed"] = int(np.asarray(stats["pairs"])[:, level].max())
            if taps is not None:
                need = np.asarray(taps)[:, level]                               # (crops, 13)
                row["pair_waste"] = 1 - need.sum() / max(P.products(need, chunk).sum(), 1)
        rows.append(row)
    return rows
