"""The reference's point-cloud transforms (Pointcept `datasets/transform.py`, docs/reference.md §7-§8) in numpy.

A *cloud* is a dict of per-point arrays with equal leading length: `coord` (n, 3) float metres,
`color` (n, 3) float 0..255, `normal` (n, 3), `segment` (n,) int, plus any other per-point arrays the
caller wants carried along (e.g. `site`, the point's row in the stored shard). Every subsampling
transform re-indexes all of them (the reference's `index_operator`). Every random choice comes from an
explicit `np.random.Generator`, so a cloud's augmentation is a pure function of its seed, independent of
thread scheduling. Transforms return new dicts (the input is never modified in place).

Deviations from the reference, all distribution-preserving:
- voxels are found by a sort on the ravelled grid key instead of an FNV hash (same voxels, other order);
- train-mode grid sampling picks a uniformly random point per voxel (the reference draws
  `randint(0, max_count) % count`, slightly biased towards a voxel's first points);
- the sphere crop selects the budget's nearest points with `argpartition` (same set up to distance
  ties; the order is shuffled later anyway);
- ChromaticAutoContrast leaves a channel unchanged when it is constant (the reference divides by 0).
"""

import numpy as np
import scipy.ndimage

from ppt_jax.data import schema

# docs/reference.md §7, step 8: (granularity m, magnitude) pairs.
ELASTIC_PARAMS = ((0.2, 0.4), (0.8, 1.6))


def bounds(coord):
    """Per-axis (min, max) of (n, 3) coordinates (column by column: faster than min(0) on (n, 3) arrays)."""
    return (np.array([coord[:, j].min() for j in range(3)], coord.dtype),
            np.array([coord[:, j].max() for j in range(3)], coord.dtype))


def linear(coord, matrix):
    """coord @ matrix.T computed column by column (BLAS on (n, 3) x (3, 3) is several times slower)."""
    m = np.asarray(matrix, coord.dtype)
    return np.stack([coord[:, 0] * m[j, 0] + coord[:, 1] * m[j, 1] + coord[:, 2] * m[j, 2]
                     for j in range(3)], axis=1)


def take(cloud, index):
    """Re-index every per-point array of `cloud` (the reference's `index_operator`).

    `np.take(axis=0)` is faster than fancy indexing on (n, 3) arrays.
    """
    return {k: np.take(v, index, axis=0) for k, v in cloud.items()}


def center_shift(cloud, apply_z=True):
    """Move the bbox centre (x, y) and, with `apply_z`, the floor (z min) to the origin."""
    coord = cloud["coord"]
    lo, hi = bounds(coord)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] if apply_z else 0], coord.dtype)
    return {**cloud, "coord": coord - shift}


def random_dropout(cloud, rng, ratio=0.2, p=0.2):
    """With probability p keep a random (1 - ratio) fraction of the points, without replacement."""
    if rng.random() >= p:
        return cloud
    n = len(cloud["coord"])
    keep = max(1, int(n * (1 - ratio)))  # never empty (the reference would crash on a 1-point cloud)
    return take(cloud, np.sort(rng.choice(n, keep, replace=False)))


def rotation_matrix(angle, axis):
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(f"rotation axis must be 'x', 'y' or 'z', got {axis!r}")


def rotate(cloud, angle, axis, center=None):
    """Rotate coord about `center` (None: the bbox centre) and normal, by `angle` radians."""
    rot = rotation_matrix(angle, axis)
    coord = cloud["coord"]
    if center is None:
        center = sum(bounds(coord)) / 2
    center = np.asarray(center, coord.dtype)
    return {**cloud, "coord": linear(coord - center, rot) + center,
            "normal": linear(cloud["normal"], rot)}


def random_rotate(cloud, rng, angle=(-1.0, 1.0), axis="z", center=None, p=0.5):
    """With probability p rotate by U(angle)·pi about `axis` (RandomRotate)."""
    if rng.random() >= p:
        return cloud
    return rotate(cloud, rng.uniform(*angle) * np.pi, axis, center)


def random_scale(cloud, rng, scale=(0.9, 1.1)):
    """One isotropic factor U(scale) on coord."""
    return {**cloud, "coord": cloud["coord"] * np.asarray(rng.uniform(*scale), cloud["coord"].dtype)}


def flip(cloud, flip_x, flip_y):
    sign = np.array([-1 if flip_x else 1, -1 if flip_y else 1, 1], cloud["coord"].dtype)
    return {**cloud, "coord": cloud["coord"] * sign, "normal": cloud["normal"] * sign}


def random_flip(cloud, rng, p=0.5):
    """Negate x with probability p, then y with probability p (coord and normal)."""
    flip_x = rng.random() < p
    flip_y = rng.random() < p
    return flip(cloud, flip_x, flip_y)


def random_jitter(cloud, rng, sigma=0.005, clip=0.02):
    """Per-point Gaussian noise N(0, sigma²) clipped to ±clip."""
    coord = cloud["coord"]
    noise = np.clip(sigma * rng.standard_normal(coord.shape), -clip, clip).astype(coord.dtype)
    return {**cloud, "coord": coord + noise}


def elastic_field(coord, rng, granularity):
    """The reference's smoothed noise field at the points, before the magnitude factor.

    Gaussian noise on a grid of spacing `granularity` starting one cell below the cloud's minimum,
    smoothed twice by 3-tap box filters along x, y, z (zero padding), trilinearly interpolated.
    """
    lo, hi = bounds(coord)
    dims = ((hi - lo) // granularity).astype(int) + 3
    noise = rng.standard_normal((*dims, 3), dtype=np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = scipy.ndimage.uniform_filter1d(noise, 3, axis=axis, mode="constant", cval=0)
    return trilinear(noise, (coord - (lo - granularity)) / granularity)


def trilinear(grid, pos):
    """Trilinear interpolation of `grid` (X, Y, Z, C) at fractional indices `pos` (n, 3) -> (n, C),
    each within [0, size - 1] per axis (as `elastic_field` places them).

    `scipy.ndimage.map_coordinates(order=1)` per channel computes the same through its generic
    spline path, several times slower: it was most of a training row's CPU time. Channels-first
    (C, n) keeps every array operation on contiguous rows.
    """
    cell = np.minimum(np.floor(pos).astype(np.int64), np.array(grid.shape[:3]) - 2)  # last: frac 1
    fx, fy, fz = ((pos[:, j] - cell[:, j]).astype(grid.dtype) for j in range(3))
    sx, sy = grid.shape[1] * grid.shape[2], grid.shape[2]
    base = cell[:, 0] * sx + cell[:, 1] * sy + cell[:, 2]
    flat = np.ascontiguousarray(grid.reshape(-1, grid.shape[3]).T)   # (C, X * Y * Z)

    def corner(dx, dy, dz):
        return np.take(flat, base + (dx * sx + dy * sy + dz), axis=1)

    line = [[corner(dx, dy, 0) * (1 - fz) + corner(dx, dy, 1) * fz for dy in (0, 1)]
            for dx in (0, 1)]
    plane = [pair[0] * (1 - fy) + pair[1] * fy for pair in line]
    return (plane[0] * (1 - fx) + plane[1] * fx).T


def elastic_distortion(cloud, rng, params=ELASTIC_PARAMS, p=0.95):
    """With probability p, for each (granularity, magnitude): coord += magnitude · field(coord)."""
    if rng.random() >= p:
        return cloud
    coord = cloud["coord"]
    for granularity, magnitude in params:
        coord = coord + (elastic_field(coord, rng, granularity) * magnitude).astype(coord.dtype)
    return {**cloud, "coord": coord}


def chromatic_auto_contrast(cloud, rng, p=0.2):
    """With probability p blend colours with their per-channel min-max stretch to 0..255 (factor U(0,1))."""
    if rng.random() >= p:
        return cloud
    color = cloud["color"]
    lo, hi = (b[None] for b in bounds(color))
    span = hi - lo
    stretched = np.where(span > 0, (color - lo) * (255 / np.where(span > 0, span, 1)), color)
    blend = rng.random()
    return {**cloud, "color": ((1 - blend) * color + blend * stretched).astype(color.dtype)}


def chromatic_translation(cloud, rng, p=0.95, ratio=0.05):
    """With probability p add one offset (U(0,1) - 0.5)·255·2·ratio per channel, clip to [0, 255]."""
    if rng.random() >= p:
        return cloud
    offset = (rng.random((1, 3)) - 0.5) * 255 * 2 * ratio
    return {**cloud, "color": np.clip(cloud["color"] + offset, 0, 255).astype(cloud["color"].dtype)}


def chromatic_jitter(cloud, rng, p=0.95, std=0.05):
    """With probability p add per-point N(0, (std·255)²) noise, clip to [0, 255]."""
    if rng.random() >= p:
        return cloud
    color = cloud["color"]
    noise = rng.standard_normal(color.shape) * (std * 255)
    return {**cloud, "color": np.clip(color + noise, 0, 255).astype(color.dtype)}


def voxelize(coord, grid_size):
    """Group points into `grid_size` voxels.

    Returns (grid_coord (n, 3) int32 >= 0, order, starts, counts): `order` sorts the points by voxel
    (stable, so ties keep point order), voxel v holds points `order[starts[v]:starts[v] + counts[v]]`.
    """
    grid = np.floor(coord / grid_size).astype(np.int64)
    lo, hi = bounds(grid)
    grid -= lo
    key = schema.ravel_grid(grid, hi - lo + 1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(order)))
    return grid.astype(np.int32), order, starts, counts


def voxel_inverse(order, starts, num_points):
    """Each point's voxel index (the reference's `inverse`)."""
    first = np.zeros(num_points, bool)
    first[starts] = True
    inverse = np.empty(num_points, np.int32)
    inverse[order] = np.cumsum(first) - 1
    return inverse


def grid_sample_train(cloud, rng, grid_size=0.02, return_inverse=False):
    """Keep one uniformly random point per voxel and add its `grid_coord` (GridSample mode 'train').

    With `return_inverse` also returns each input point's row in the output.
    """
    grid, order, starts, counts = voxelize(cloud["coord"], grid_size)
    pick = order[starts + np.floor(rng.random(len(starts)) * counts).astype(np.int64)]
    out = {**take(cloud, pick), "grid_coord": np.take(grid, pick, axis=0)}
    if return_inverse:
        return out, voxel_inverse(order, starts, len(grid))
    return out


def grid_sample_test(cloud, grid_size=0.02):
    """GridSample mode 'test': fragment i keeps the (i mod count_v)-th point of every voxel v.

    Returns a list of (fragment cloud with `grid_coord`, index of its points in `cloud`).
    """
    grid, order, starts, counts = voxelize(cloud["coord"], grid_size)
    fragments = []
    for i in range(int(counts.max())):
        pick = order[starts + i % counts]
        fragments.append(({**take(cloud, pick), "grid_coord": np.take(grid, pick, axis=0)}, pick))
    return fragments


def sphere_crop(cloud, rng, budget):
    """If there are more than `budget` points, keep the `budget` nearest to a random point."""
    coord = cloud["coord"]
    n = len(coord)
    if n <= budget:
        return cloud
    center = coord[rng.integers(n)]
    dist = sum(np.square(coord[:, j] - center[j]) for j in range(3))
    return take(cloud, np.sort(np.argpartition(dist, budget - 1)[:budget]))


def reference_crop_budget(num_points, point_max=None, sample_rate=None):
    """SphereCrop's cap: int(sample_rate · n) (at least 1) when a rate is given, else `point_max`
    (None: no crop)."""
    if sample_rate is not None:
        return max(1, int(sample_rate * num_points))
    return num_points if point_max is None else int(point_max)


def shuffle(cloud, rng):
    return take(cloud, rng.permutation(len(cloud["coord"])))


def train_transform(cloud, rng, crop_budget_fn, site_budget, grid_size=0.02):
    """docs/reference.md §7, steps 1-16, in the reference's order, then the static site budget.

    `crop_budget_fn(n)` is the dataset's reference SphereCrop cap for n sampled points. After that crop
    a second sphere crop keeps at most `site_budget` sites (the device batch's static N). Returns
    (cloud with `grid_coord`, number of sites removed by the site budget).
    """
    cloud = center_shift(cloud, apply_z=True)
    cloud = random_dropout(cloud, rng)
    cloud = random_rotate(cloud, rng, angle=(-1, 1), axis="z", center=(0, 0, 0), p=0.5)
    cloud = random_rotate(cloud, rng, angle=(-1 / 64, 1 / 64), axis="x", p=0.5)
    cloud = random_rotate(cloud, rng, angle=(-1 / 64, 1 / 64), axis="y", p=0.5)
    cloud = random_scale(cloud, rng)
    cloud = random_flip(cloud, rng)
    cloud = random_jitter(cloud, rng)
    cloud = elastic_distortion(cloud, rng)
    cloud = chromatic_auto_contrast(cloud, rng)
    cloud = chromatic_translation(cloud, rng)
    cloud = chromatic_jitter(cloud, rng)
    cloud = grid_sample_train(cloud, rng, grid_size)
    cloud = sphere_crop(cloud, rng, crop_budget_fn(len(cloud["coord"])))
    num_sites = len(cloud["coord"])
    cloud = sphere_crop(cloud, rng, site_budget)
    cloud = center_shift(cloud, apply_z=False)
    return shuffle(cloud, rng), num_sites - len(cloud["coord"])
