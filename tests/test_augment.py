"""Property tests of the reference transforms (docs/reference.md §7-§8) against independent numpy/scipy references."""

import numpy as np
import pytest
import scipy.interpolate
import scipy.ndimage
from scipy.spatial.distance import pdist

from ppt_jax.data import augment


def _cloud(n=2000, seed=0, extent=(3.0, 2.0, 1.5)):
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((n, 3)).astype(np.float32)
    return {"coord": (rng.random((n, 3)) * extent).astype(np.float32),
            "color": rng.integers(0, 256, (n, 3)).astype(np.float32),
            "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
            "segment": rng.integers(-1, 13, n).astype(np.int32),
            "site": np.arange(n, dtype=np.int32)}


def _voxels(coord, grid_size):
    return np.floor(coord.astype(np.float64) / grid_size).astype(np.int64)


def test_rotation_keeps_distances_and_normals():
    cloud = _cloud(300)
    for axis in "xyz":
        out = augment.rotate(cloud, 0.7, axis, center=None)
        np.testing.assert_allclose(pdist(out["coord"]), pdist(cloud["coord"]), atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1, atol=1e-5)
        # the angle between a normal and a coordinate difference is preserved too
        d_in = cloud["coord"][1] - cloud["coord"][0]
        d_out = out["coord"][1] - out["coord"][0]
        np.testing.assert_allclose(d_out @ out["normal"][5], d_in @ cloud["normal"][5], atol=1e-5)
    quarter = augment.rotate(cloud, np.pi / 2, "z", center=(0, 0, 0))
    np.testing.assert_allclose(quarter["coord"][:, 0], -cloud["coord"][:, 1], atol=1e-5)
    np.testing.assert_allclose(quarter["coord"][:, 1], cloud["coord"][:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="rotation axis"):
        augment.rotate(cloud, 0.1, "w")


def test_center_shift():
    cloud = _cloud()
    out = augment.center_shift(cloud, apply_z=True)
    lo, hi = out["coord"].min(0), out["coord"].max(0)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0, atol=1e-6)
    flat = augment.center_shift(cloud, apply_z=False)
    np.testing.assert_array_equal(flat["coord"][:, 2], cloud["coord"][:, 2])


def test_dropout_jitter_scale_flip():
    cloud = _cloud(1000)
    rng = np.random.default_rng(1)
    out = augment.random_dropout(cloud, rng, ratio=0.2, p=1.0)
    assert len(out["coord"]) == 800 and len(np.unique(out["site"])) == 800
    np.testing.assert_array_equal(out["coord"], cloud["coord"][out["site"]])
    jit = augment.random_jitter(cloud, rng, sigma=0.05, clip=0.02)
    delta = jit["coord"] - cloud["coord"]
    assert np.abs(delta).max() <= 0.02 + 1e-6 and np.abs(delta).max() > 0.019
    scaled = augment.random_scale(cloud, rng, (0.9, 1.1))
    ratio = scaled["coord"] / cloud["coord"]
    assert np.ptp(ratio) < 1e-5 and 0.9 <= ratio[0, 0] <= 1.1
    flipped = augment.flip(cloud, True, False)
    np.testing.assert_array_equal(flipped["coord"][:, 0], -cloud["coord"][:, 0])
    np.testing.assert_array_equal(flipped["normal"][:, 1], cloud["normal"][:, 1])


def test_grid_sample_train_keeps_one_point_per_voxel():
    cloud = _cloud(5000, extent=(0.5, 0.4, 0.3))
    out, inverse = augment.grid_sample_train(cloud, np.random.default_rng(2), 0.02,
                                             return_inverse=True)
    vox_in = _voxels(cloud["coord"], 0.02)
    vox_out = _voxels(out["coord"], 0.02)
    assert len(np.unique(vox_out, axis=0)) == len(vox_out)  # one point per voxel
    assert len(vox_out) == len(np.unique(vox_in, axis=0))  # ... in every occupied voxel
    np.testing.assert_array_equal(out["grid_coord"], vox_out - vox_in.min(0))
    assert out["grid_coord"].min() == 0 and out["grid_coord"].dtype == np.int32
    np.testing.assert_array_equal(vox_out[inverse], vox_in)  # inverse: each point -> its voxel
    np.testing.assert_array_equal(out["coord"], cloud["coord"][out["site"]])


def test_grid_sample_picks_uniformly():
    """Two points in one voxel: each is picked about half the time (the random point per voxel)."""
    cloud = {"coord": np.array([[0.001, 0.001, 0.001], [0.011, 0.011, 0.011]], np.float32),
             "site": np.arange(2)}
    rng = np.random.default_rng(3)
    picks = [augment.grid_sample_train(cloud, rng, 0.02)["site"][0] for _ in range(400)]
    assert 150 < sum(picks) < 250


def test_grid_sample_test_fragments_cover_points_and_voxels():
    cloud = _cloud(3000, extent=(0.3, 0.3, 0.2))
    vox = _voxels(cloud["coord"], 0.02)
    _, counts = np.unique(vox, axis=0, return_counts=True)
    fragments = augment.grid_sample_test(cloud, 0.02)
    assert len(fragments) == counts.max()
    covered = np.zeros(len(vox), bool)
    for fragment, pick in fragments:
        np.testing.assert_array_equal(fragment["coord"], cloud["coord"][pick])
        assert len(np.unique(vox[pick], axis=0)) == len(pick) == len(counts)  # every voxel once
        covered[pick] = True
    assert covered.all()


def test_sphere_crop_keeps_budget_and_nearest():
    cloud = _cloud(2000)
    out = augment.sphere_crop(cloud, np.random.default_rng(4), 500)
    assert len(out["coord"]) == 500 and len(np.unique(out["site"])) == 500
    kept = np.zeros(2000, bool)
    kept[out["site"]] = True
    # some kept point is the centre; every kept point is nearer to it than every dropped point
    dists = [np.square(cloud["coord"] - cloud["coord"][c]).sum(1) for c in out["site"]]
    assert any(d[kept].max() <= d[~kept].min() for d in dists)
    assert augment.sphere_crop(cloud, np.random.default_rng(4), 5000) is cloud
    assert augment.reference_crop_budget(1000, sample_rate=0.6) == 600
    assert augment.reference_crop_budget(1000, point_max=100) == 100
    assert augment.reference_crop_budget(1000) == 1000


def test_colours_stay_in_range():
    cloud = _cloud(1000)
    cloud["color"][:10] = 0
    cloud["color"][10:20] = 255
    rng = np.random.default_rng(5)
    for _ in range(20):
        out = augment.chromatic_auto_contrast(cloud, rng, p=1.0)
        out = augment.chromatic_translation(out, rng, p=1.0, ratio=0.05)
        out = augment.chromatic_jitter(out, rng, p=1.0, std=0.05)
        assert out["color"].min() >= 0 and out["color"].max() <= 255
    grey = {**cloud, "color": np.full((1000, 3), 77.0, np.float32)}
    out = augment.chromatic_auto_contrast(grey, rng, p=1.0)
    np.testing.assert_array_equal(out["color"], grey["color"])  # constant channel: unchanged, no NaN
    stretched = augment.chromatic_auto_contrast(
        {**cloud, "color": np.array([[10, 20, 30], [110, 220, 130]], np.float32)},
        np.random.default_rng(6), p=1.0)
    blend = np.random.default_rng(6)
    blend.random()
    b = blend.random()
    np.testing.assert_allclose(stretched["color"], [[10 * (1 - b), 20 * (1 - b), 30 * (1 - b)],
                                                    [110 + b * 145, 220 + b * 35, 130 + b * 125]],
                               rtol=1e-5)


def _reference_field(coord, rng, granularity):
    """The reference's ElasticDistortion noise field: ndimage.convolve + RegularGridInterpolator."""
    blurs = [np.ones(s, np.float32) / 3 for s in ((3, 1, 1, 1), (1, 3, 1, 1), (1, 1, 3, 1))]
    lo = coord.min(0)
    dims = ((coord - lo).max(0) // granularity).astype(int) + 3
    noise = rng.standard_normal((*dims, 3), dtype=np.float32)
    for _ in range(2):
        for blur in blurs:
            noise = scipy.ndimage.convolve(noise, blur, mode="constant", cval=0)
    axes = [np.linspace(a, b, d) for a, b, d in zip(lo - granularity,
                                                    lo + granularity * (dims - 2), dims)]
    interp = scipy.interpolate.RegularGridInterpolator(axes, noise, bounds_error=False,
                                                       fill_value=0)
    return interp(coord), np.abs(noise).max()


def test_trilinear_equals_map_coordinates():
    rng = np.random.default_rng(3)
    grid = rng.standard_normal((5, 4, 6, 3)).astype(np.float32)
    pos = rng.random((500, 3)) * (np.array(grid.shape[:3]) - 1)
    pos[:3] = [[0, 0, 0], [4, 3, 5], [2, 1, 3]]   # grid corners and a lattice point exactly
    expected = np.stack([scipy.ndimage.map_coordinates(grid[..., c], pos.T, order=1)
                         for c in range(3)], axis=1)
    np.testing.assert_allclose(augment.trilinear(grid, pos), expected, atol=1e-6)


@pytest.mark.parametrize("granularity", [0.2, 0.8])
def test_elastic_field_matches_reference_and_is_bounded(granularity):
    coord = _cloud(3000)["coord"]
    field = augment.elastic_field(coord, np.random.default_rng(7), granularity)
    expected, bound = _reference_field(coord.astype(np.float64), np.random.default_rng(7),
                                       granularity)
    np.testing.assert_allclose(field, expected, atol=1e-5)
    assert np.abs(field).max() <= bound + 1e-6
    out = augment.elastic_distortion({"coord": coord}, np.random.default_rng(8),
                                     ((granularity, 0.4),), p=1.0)
    assert 0 < np.abs(out["coord"] - coord).max() <= 0.4 * 1.0 + 1e-6  # smoothed N(0,1) < 1 here


def test_train_transform_is_seeded_and_valid():
    cloud = _cloud(6000, extent=(1.5, 1.0, 0.8))
    run = lambda seed: augment.train_transform(  # noqa: E731
        cloud, np.random.default_rng(seed),
        lambda n: augment.reference_crop_budget(n, sample_rate=0.8), 900)
    (a, dropped_a), (b, dropped_b) = run(11), run(11)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert dropped_a == dropped_b > 0 and len(a["coord"]) == 900
    assert len(np.unique(a["grid_coord"], axis=0)) == 900 and a["grid_coord"].min() >= 0
    assert 0 <= a["color"].min() and a["color"].max() <= 255
    np.testing.assert_array_equal(a["segment"], cloud["segment"][a["site"]])
    other, _ = run(12)
    assert not np.array_equal(other["site"], a["site"])


def test_tiny_clouds_survive_the_train_transform():
    for n in (1, 2, 3):
        cloud = _cloud(n)
        for seed in range(20):  # covers dropout, crops and every random branch
            out, _ = augment.train_transform(
                cloud, np.random.default_rng(seed),
                lambda m: augment.reference_crop_budget(m, sample_rate=0.6), 100)
            assert 1 <= len(out["coord"]) <= n and np.isfinite(out["coord"]).all()
