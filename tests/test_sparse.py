"""The sparse engine equals dense 3D convolutions (lax.conv_general_dilated on a dense grid) on random sites."""

import dataclasses
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ppt_jax import sparse
from conftest import cpu_env

G = 12  # side of the small dense test grids
HI = lax.Precision.HIGHEST
DN = ("NDHWC", "DHWIO", "NDHWC")


def random_sites(rng, n_cap, n_real, side=G, isolated=()):
    """n_real unique random coords in [0, side)^3 (+ isolated ones), padded to n_cap with junk padding rows
    that repeat real coordinates (padding must never be seen, wherever it claims to be)."""
    flat = rng.choice(side**3, size=n_real - len(isolated), replace=False)
    coords = np.stack(np.unravel_index(flat, (side,) * 3), axis=-1)
    if len(isolated):
        coords = np.concatenate([coords, np.asarray(isolated)])
    coords = coords[rng.permutation(len(coords))].astype(np.int32)
    pad = coords[rng.integers(0, len(coords), n_cap - len(coords))]
    mask = np.zeros(n_cap, bool)
    mask[:len(coords)] = True
    perm = rng.permutation(n_cap)  # padding rows interleaved with real ones
    return np.concatenate([coords, pad])[perm], mask[perm]


def to_dense(x, coords, mask, side):
    grid = jnp.zeros((side, side, side, x.shape[-1]), x.dtype)
    c = jnp.where(mask[:, None], coords, side)  # padding scattered out of range, dropped
    return grid.at[c[:, 0], c[:, 1], c[:, 2]].add(x, mode="drop")


def from_dense(grid, coords, mask):
    c = jnp.clip(coords, 0, grid.shape[0] - 1)
    return jnp.where(mask[:, None], grid[c[:, 0], c[:, 1], c[:, 2]], 0)


def dense_subm(x, coords, mask, w, side=G):
    k = round(w.shape[0] ** (1 / 3))
    grid = to_dense(x, coords, mask, side)[None]
    y = lax.conv_general_dilated(grid, w.reshape(k, k, k, *w.shape[1:]), (1, 1, 1), "SAME",
                                 dimension_numbers=DN, precision=HI)[0]
    return from_dense(y, coords, mask)


def dense_down(x, coords, mask, w, ccoords, cmask, side=G):
    grid = to_dense(x, coords, mask, side)[None]
    y = lax.conv_general_dilated(grid, w.reshape(2, 2, 2, *w.shape[1:]), (2, 2, 2), "VALID",
                                 dimension_numbers=DN, precision=HI)[0]
    return from_dense(y, ccoords, cmask)


def dense_up(x, ccoords, cmask, w, coords, mask, side=G):
    grid = to_dense(x, ccoords, cmask, side // 2)
    fine = jnp.einsum("xyzc,abecd->xaybzed", grid, w.reshape(2, 2, 2, *w.shape[1:]), precision=HI)
    return from_dense(fine.reshape(side, side, side, -1), coords, mask)


FORMS = ("dense", "pairs")


def spec_for(n0, kernels=None, form="dense", levels=4, chunk=16):
    """n0 sites at every level; the 'pairs' form at every level with room for all 26 neighbours."""
    pairs = (-(-n0 * 26 // chunk) * chunk,) * levels if form == "pairs" else None
    return sparse.HierarchySpec(capacities=(n0,) * levels, kernel_sizes=kernels, pair_capacities=pairs,
                                pair_chunks=(chunk,) * levels)


build = jax.jit(sparse.build_hierarchy, static_argnums=2)
subm_j, down_j, up_j = (jax.jit(f, static_argnums=2) for f in (sparse.subm_conv, sparse.down_conv, sparse.up_conv))
dense_subm_j, dense_down_j = (jax.jit(f, static_argnames="side") for f in (dense_subm, dense_down))


def scene_sites():
    return random_sites(np.random.default_rng(0), 400, 300, isolated=[(11, 11, 11), (0, 11, 0)])


@pytest.fixture(scope="module")
def scene():
    coords, mask = scene_sites()
    return coords, mask, build(coords, mask, spec_for(400, ((5, 3), (3,), (3,), (3,))))


@pytest.fixture(scope="module")
def pair_scene():
    """The same sites with the exact-pair form at every level (chunks of 16 pairs: main and tail chunks)."""
    coords, mask = scene_sites()
    return coords, mask, build(coords, mask, spec_for(400, ((5, 3), (3,), (3,), (3,)), "pairs"))


@pytest.fixture(params=FORMS)
def any_scene(request, scene, pair_scene):
    return scene if request.param == "dense" else pair_scene


@pytest.mark.parametrize("rows", [sparse.conv.ROWS, 96])
@pytest.mark.parametrize("k,c,d", [(3, 4, 5), (5, 3, 2), (1, 6, 7)])
def test_subm_equals_dense_with_grads(any_scene, k, c, d, rows, monkeypatch):
    """Also with the weight gradients' loop over sites cut into chunks and a ragged last one."""
    monkeypatch.setattr(sparse.conv, "ROWS", rows)
    coords, mask, h = any_scene
    rng = np.random.default_rng(k)
    x = rng.normal(size=(400, c)).astype(np.float32)
    w = rng.normal(size=(k**3, c, d)).astype(np.float32)
    ct = rng.normal(size=(400, d)).astype(np.float32)
    ours = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(sparse.subm_conv(x, h, 0, w) * ct), (0, 1)))
    dense = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(dense_subm(x, coords, mask, w) * ct), (0, 1)))
    y, ref = subm_j(x, h, 0, w), dense_subm_j(x, coords, mask, w)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray(y)[~mask] == 0)
    for a, b in zip(jax.tree.leaves(ours(x, w)), jax.tree.leaves(dense(x, w))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("chunk", [sparse.conv.CHUNK, 96])
def test_down_subm_up_chain_equals_dense(any_scene, chunk, monkeypatch):
    """Level 0 -> 1 -> 2 -> 1 -> 0 with submanifold convs between, values and all gradients; also with
    the tap conv's scan and the weight gradients' loops cut into several chunks of sites and a ragged
    last one."""
    monkeypatch.setattr(sparse.conv, "CHUNK", chunk)
    monkeypatch.setattr(sparse.conv, "ROWS", min(chunk, sparse.conv.ROWS))
    coords, mask, h = any_scene
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    shapes = [(125, 3, 3), (8, 3, 4), (27, 4, 4), (8, 4, 5), (8, 5, 4), (8, 4, 2)]
    ws = [rng.normal(size=s).astype(np.float32) for s in shapes]
    c1, m1, c2, m2 = h.coords[1], h.masks[1], h.coords[2], h.masks[2]

    def sparse_chain(x, ws):
        y = sparse.subm_conv(x, h, 0, ws[0])
        y = sparse.down_conv(y, h, 0, ws[1])
        y = sparse.subm_conv(y, h, 1, ws[2])
        y = sparse.down_conv(y, h, 1, ws[3])
        y = sparse.up_conv(y, h, 1, ws[4])
        return sparse.up_conv(y, h, 0, ws[5])

    def dense_chain(x, ws):
        y = dense_subm(x, coords, mask, ws[0])
        y = dense_down(y, coords, mask, ws[1], c1, m1)
        y = dense_subm(y, c1, m1, ws[2], G // 2)
        y = dense_down(y, c1, m1, ws[3], c2, m2, G // 2)
        y = dense_up(y, c2, m2, ws[4], c1, m1, G // 2)
        return dense_up(y, c1, m1, ws[5], coords, mask)

    ct = rng.normal(size=(400, 2)).astype(np.float32)

    def value_and_grads(chain):
        return jax.jit(lambda x, ws: (chain(x, ws), jax.grad(lambda x, ws: jnp.sum(chain(x, ws) * ct), (0, 1))(x, ws)))

    ours, ref = value_and_grads(sparse_chain)(x, ws), value_and_grads(dense_chain)(x, ws)
    # Six convs reach magnitudes of ~1e3: float32 sums in another order differ by ~1e-6 of the largest entry.
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_coarse_sites_are_unique_halves(scene):
    coords, mask, h = scene
    for level in (1, 2, 3):
        want = np.unique(coords[mask] >> level, axis=0)
        got = np.asarray(h.coords[level])[np.asarray(h.masks[level])]
        np.testing.assert_array_equal(got, want)  # key order = lexicographic order
        assert np.all(np.asarray(h.coords[level])[~np.asarray(h.masks[level])] == 0)
    np.testing.assert_array_equal(h.dropped_sites, 0)


def test_down_up_round_trip_returns_sites_in_order(scene):
    """space-to-depth (down, w[c] = e_c) then depth-to-space (up) is the identity on the exact input sites."""
    coords, mask, h = scene
    x = np.random.default_rng(2).normal(size=(400, 2)).astype(np.float32)
    w_down = np.einsum("ab,cd->bcad", np.eye(8), np.eye(2)).reshape(8, 2, 16).astype(np.float32)
    w_up = np.swapaxes(w_down, 1, 2)
    y = up_j(down_j(x, h, 0, w_down), h, 0, w_up)
    np.testing.assert_array_equal(y, np.where(mask[:, None], x, 0))


@pytest.mark.parametrize("form", FORMS)
def test_batch_with_overlapping_coords_has_no_cross_talk(form):
    rng = np.random.default_rng(3)
    spec = spec_for(200, form=form)
    c0, m0 = random_sites(rng, 200, 150)
    c1, m1 = random_sites(rng, 200, 90)
    c1[:60] = c0[:60]  # many shared coordinates
    coords, mask = np.stack([c0, c1]), np.stack([m0, m1])
    x = rng.normal(size=(2, 200, 3)).astype(np.float32)
    w = rng.normal(size=(27, 3, 4)).astype(np.float32)
    wd = rng.normal(size=(8, 3, 4)).astype(np.float32)

    @jax.jit
    def run(coords, mask, x):  # the batched call, as the model makes it
        h = jax.vmap(sparse.build_hierarchy, (0, 0, None))(coords, mask, spec)
        return h, sparse.subm_conv(x, h, 0, w), sparse.down_conv(x, h, 0, wd)

    h, sub, down = run(coords, mask, x)
    for b in range(2):
        mb = np.asarray(h.masks[0][b])
        np.testing.assert_array_equal(mb, mask[b])
        np.testing.assert_allclose(sub[b], dense_subm_j(x[b], coords[b], mb, w), rtol=1e-5, atol=1e-4)
        ref = dense_down_j(x[b], coords[b], mb, wd, h.coords[1][b], h.masks[1][b])
        np.testing.assert_allclose(down[b], ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_sites_at_the_grid_bound_and_beyond(form):
    """A cluster touching GRID_BOUND - 1 (shifted by a multiple of 16, so parities at every level keep)
    gives the dense result of the unshifted cluster; a site at GRID_BOUND is counted, ignored, reported."""
    rng = np.random.default_rng(4)
    coords, mask = random_sites(rng, 120, 100, isolated=[(G - 1, G - 1, G - 1)])
    shift = sparse.GRID_BOUND - 16
    far = coords + shift
    assert far[mask].max() == sparse.GRID_BOUND - 5
    far[mask & np.all(coords == G - 1, axis=1)] = sparse.GRID_BOUND - 1
    near = far - shift
    spec = spec_for(121, form=form)
    outside = np.array([[sparse.GRID_BOUND, 3, 3]], np.int32)
    h = build(np.concatenate([far, outside]), np.append(mask, True), spec)
    assert int(h.out_of_bound) == 1 and int(h.dropped_sites[0]) == 1 and not bool(h.masks[0][-1])
    x = rng.normal(size=(121, 3)).astype(np.float32)
    w = rng.normal(size=(27, 3, 2)).astype(np.float32)
    ref = dense_subm_j(x[:120], near, mask, w, side=16)
    np.testing.assert_allclose(subm_j(x, h, 0, w)[:120], ref, rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray(h.coords[1])[np.asarray(h.masks[1])] >= shift // 2)
    with pytest.raises(ValueError, match="outside \\[0, 1280\\)"):
        sparse.check_hierarchy(h, "scene0")


def test_over_full_level_reports_exact_drop_count():
    rng = np.random.default_rng(5)
    coords, mask = random_sites(rng, 300, 250)
    parents = np.unique(coords[mask] >> 1, axis=0)
    cap1 = len(parents) - 7
    kept = parents[:cap1]  # the smallest keys are kept
    n2 = len(np.unique(kept >> 1, axis=0))
    spec = sparse.HierarchySpec(capacities=(300, cap1, n2 - 3))
    h = build(coords, mask, spec)
    np.testing.assert_array_equal(h.dropped_sites, [0, 7, 3])
    np.testing.assert_array_equal(np.asarray(h.coords[1]), kept)
    with pytest.raises(ValueError, match="level 1 needs 7 more site"):
        sparse.check_hierarchy(h)
    # children of dropped parents get nothing back from the inverse conv
    y = up_j(np.ones((cap1, 1), np.float32), h, 0, np.ones((8, 1, 1), np.float32))
    lost = ~np.any(np.all((coords[:, None] >> 1) == kept[None], axis=-1), axis=1)
    np.testing.assert_array_equal(np.asarray(y)[:, 0], (mask & ~lost).astype(np.float32))


def test_duplicate_input_sites_are_dropped_and_reported():
    coords = np.array([[1, 2, 3], [4, 4, 4], [1, 2, 3], [1, 2, 4]], np.int32)
    h = build(coords, np.ones(4, bool), spec_for(4))
    np.testing.assert_array_equal(h.masks[0], [True, True, False, True])
    assert int(h.dropped_sites[0]) == 1
    y = subm_j(np.ones((4, 1), np.float32), h, 0, np.ones((27, 1, 1), np.float32))
    np.testing.assert_array_equal(np.asarray(y)[:, 0], [2, 1, 0, 2])  # the repeat is no neighbour
    with pytest.raises(ValueError, match="repeat"):
        sparse.check_hierarchy(h)


def test_bfloat16_accumulates_in_float32(scene):
    coords, mask, h = scene
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    w = rng.normal(size=(27, 16, 8)).astype(np.float32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y = subm_j(xb, h, 0, wb)
    assert y.dtype == jnp.bfloat16
    ref = dense_subm_j(xb.astype(np.float32), coords, mask, wb.astype(np.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=1e-2, atol=1e-1)
    gx, gw = jax.jit(jax.grad(lambda x, w: jnp.sum(sparse.subm_conv(x, h, 0, w).astype(jnp.float32)), (0, 1)))(xb, wb)
    assert gx.dtype == gw.dtype == jnp.bfloat16


@pytest.mark.parametrize("form", FORMS)
def test_one_compile_and_bitwise_determinism(form):
    rng = np.random.default_rng(7)
    spec = spec_for(150, form=form)
    w = rng.normal(size=(27, 3, 3)).astype(np.float32)
    wd = rng.normal(size=(8, 3, 3)).astype(np.float32)
    traces = []

    @jax.jit
    def step(coords, mask, x, w, wd):
        traces.append(1)

        def loss(x, w, wd):
            h = jax.vmap(sparse.build_hierarchy, (0, 0, None))(coords, mask, spec)
            y = sparse.subm_conv(x, h, 0, w)
            z = sparse.down_conv(y, h, 0, wd)
            y = y + sparse.up_conv(z, h, 0, jnp.swapaxes(wd, 1, 2))
            return jnp.sum(jnp.sin(y)), h.dropped_sites

        return jax.grad(loss, (0, 1, 2), has_aux=True)(x, w, wd)

    outs = []
    for n_real in (40, 150, 97, 40):
        batch = [random_sites(np.random.default_rng(n_real + b), 150, n_real - 10 * b) for b in range(2)]
        coords, mask = (np.stack(a) for a in zip(*batch))
        x = np.random.default_rng(n_real).normal(size=(2, 150, 3)).astype(np.float32)
        outs.append(jax.device_get(step(coords, mask, x, w, wd)))
    assert len(traces) == 1
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[3])):
        assert a.tobytes() == b.tobytes()


def test_bad_inputs_raise_clear_errors(scene):
    _, _, h = scene
    with pytest.raises(ValueError, match="capacities\\[0\\] = 5"):
        sparse.build_hierarchy(np.zeros((4, 3), np.int32), np.ones(4, bool), sparse.HierarchySpec((5, 2)))
    with pytest.raises(ValueError, match="kernel_sizes"):
        sparse.HierarchySpec((5, 2), kernel_sizes=((4,), (3,)))
    with pytest.raises(ValueError, match="neighbour_maps"):
        sparse.HierarchySpec((5,), neighbour_maps="hashed")
    with pytest.raises(ValueError, match="search_method"):
        sparse.HierarchySpec((5,), search_method="bogus")
    with pytest.raises(ValueError, match="no neighbour table for 125 taps at level 1"):
        sparse.subm_conv(np.zeros((400, 2), np.float32), h, 1, np.zeros((125, 2, 2), np.float32))
    with pytest.raises(ValueError, match="weight shape"):
        sparse.down_conv(np.zeros((400, 2), np.float32), h, 0, np.zeros((27, 2, 2), np.float32))
    with pytest.raises(ValueError, match="level 3 out of range"):
        sparse.up_conv(np.zeros((400, 2), np.float32), h, 3, np.zeros((8, 2, 2), np.float32))


def test_derived_tables_equal_searched_tables(scene):
    """Finer levels' tables derived from their parents' equal a binary search of every neighbour key."""
    coords, mask, h = scene
    searched = build(coords, mask, sparse.HierarchySpec((400,) * 4, ((5, 3), (3,), (3,), (3,)), "searched"))
    for level in range(4):
        assert sorted(h.nbr[level]) == sorted(searched.nbr[level])
        for k, table in searched.nbr[level].items():
            np.testing.assert_array_equal(h.nbr[level][k], table)


@pytest.mark.parametrize("method", ["sort", "scan_unrolled", "compare_all"])
def test_search_methods_agree(scene, method):
    coords, mask, h = scene
    h2 = build(coords, mask, sparse.HierarchySpec((400,), ((3,),), search_method=method))
    np.testing.assert_array_equal(h2.nbr[0][3], h.nbr[0][3])


SHARDED_FORMS = {"dense": None, "pairs": (1664, 1664, 0)}   # conv form -> HierarchySpec.pair_capacities


@pytest.fixture(scope="module")
def sharded_run():
    """Both conv forms in one 2-device subprocess (one JAX start-up): per form, "OK" or its error.

    The timeout only catches a hung child: it is wall time, so a machine busy with other work (or a
    paused test process) stretches a ~20 s run far beyond its CPU time."""
    code = textwrap.dedent("""
        import traceback
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from ppt_jax import sparse
        rng = np.random.default_rng(0)
        coords = rng.integers(0, 6, (4, 64, 3)).astype(np.int32)
        mask = rng.random((4, 64)) < 0.8
        x = rng.normal(size=(4, 64, 3)).astype(np.float32)
        w = rng.normal(size=(27, 3, 3)).astype(np.float32)
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
        sh = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
        for form, pairs in FORMS.items():
            try:
                spec = sparse.HierarchySpec(capacities=(64, 64, 64), pair_capacities=pairs,
                                            pair_chunks=(64, 64, 64))
                def loss(x, w, coords, mask):
                    h = jax.vmap(sparse.build_hierarchy, (0, 0, None))(coords, mask, spec)
                    return jnp.sum(sparse.subm_conv(x, h, 0, w) ** 2)
                f = jax.jit(jax.value_and_grad(loss, (0, 1)))
                ref = f(x, w, coords, mask)
                out = f(sh(x), w, sh(coords), sh(mask))
                assert len(out[1][0].sharding.device_set) == 2
                for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
                print(f"{form}: OK")
            except Exception:
                print(f"{form}: " + traceback.format_exc().replace(chr(10), " | "))
    """).replace("FORMS", repr(SHARDED_FORMS))
    res = subprocess.run([sys.executable, "-c", code], env=cpu_env(2), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return dict(line.split(": ", 1) for line in res.stdout.splitlines() if line.startswith(tuple(SHARDED_FORMS)))


@pytest.mark.parametrize("form", SHARDED_FORMS)
def test_sharded_batch_matches_unsharded(sharded_run, form):
    """Two simulated CPU devices, the batch sharded over them: same values and gradients (both forms)."""
    assert sharded_run.get(form) == "OK", sharded_run.get(form, "no result")


def test_pair_lists_hold_every_active_pair_once_in_tap_chunks(pair_scene):
    """Each chunk holds one stored tap's pairs, sorted by output site; main chunks are full, a tap's tail
    is its < S remaining pairs; together they are exactly the table's active entries of the taps t < 13,
    whose mirrors (tap 26 - t, input and output swapped) are exactly the active entries of taps t > 13;
    padding entries point at no site."""
    coords, mask, h = pair_scene
    for level in range(4):
        n = h.masks[level].shape[0]
        table = np.asarray(h.nbr[level][3])
        lists = jax.device_get(h.pairs[level])
        main_chunk = lists[0].chunk
        assert lists[1].chunk == sparse.pairs.tail_chunk(main_chunk)
        want = {(i, t) for i, t in zip(*np.nonzero(table < n)) if t < 13}
        mirrored = {(int(table[i, t]), 26 - t) for i, t in want}
        assert mirrored == {(i, t) for i, t in zip(*np.nonzero(table < n)) if t > 13}
        got, tail = [], {}
        for which, pl in enumerate(lists):
            for c in range(int(pl.num_chunks)):
                out, inp = pl.out[c * pl.chunk:(c + 1) * pl.chunk], pl.inp[c * pl.chunk:(c + 1) * pl.chunk]
                real = out < n
                assert np.all(np.diff(out[real]) > 0) and np.all(inp[real] == table[out[real], pl.chunk_tap[c]])
                assert which == 1 or real.all()
                got += [(int(i), int(pl.chunk_tap[c])) for i in out[real]]
                if which:
                    tail[int(pl.chunk_tap[c])] = tail.get(int(pl.chunk_tap[c]), 0) + int(real.sum())
            assert np.all(pl.out[int(pl.num_chunks) * pl.chunk:] == n)
        assert len(got) == len(set(got)) and set(got) == want
        assert all(v < main_chunk for v in tail.values())
    np.testing.assert_array_equal(h.dropped_pairs, 0)


def test_pair_products_are_counted_by_hand_and_match_the_built_lists(pair_scene):
    """`pairs.products` (what sizing reports as the convs' product padding): whole chunks of S plus the
    remainder rounded up to tail chunks of S / TAIL_SPLIT; it equals what the built lists loop over."""
    s = 16 * sparse.pairs.TAIL_SPLIT
    t = s // sparse.pairs.TAIL_SPLIT
    counts = np.array([0, 1, s - 1, s, s + 1, 3 * s + t + 1] + [0] * 7)
    want = [0, t, s, s, s + t, 3 * s + 2 * t] + [0] * 7
    np.testing.assert_array_equal(sparse.pairs.products(counts, s), want)
    coords, mask, h = pair_scene
    for level in range(4):
        n = h.masks[level].shape[0]
        taps = np.sum(np.asarray(h.nbr[level][3]) < n, axis=0)[:13]
        main, tail = jax.device_get(h.pairs[level])
        done = int(main.num_chunks) * main.chunk + int(tail.num_chunks) * tail.chunk
        assert done == int(sparse.pairs.products(taps, main.chunk).sum())


def test_pair_overflow_is_counted_exactly_and_raised(pair_scene):
    coords, mask, h = pair_scene
    table = np.asarray(h.nbr[0][3])
    counts = np.sum(table < 400, axis=0)[sparse.pairs.HALF]
    whole = counts // 16 * 16                     # the main list's share of each tap; the rest is its tail
    keep = int(whole[:5].sum())  # room for the first five taps only
    spec = sparse.HierarchySpec((400, 400, 400, 400), ((5, 3), (3,), (3,), (3,)),
                                pair_capacities=(keep, 0, 0, 0), pair_chunks=(16,) * 4)
    small = build(coords, mask, spec)
    assert int(small.dropped_pairs[0]) == int(whole[5:].sum()) > 0
    with pytest.raises(ValueError, match=r"level 0 has \d+ more 3x3x3 neighbour pair.*pair_capacities\[0\]"):
        sparse.check_hierarchy(small, "scene0")
    with pytest.raises(ValueError, match="multiple of pair_chunks"):
        sparse.HierarchySpec((400,), pair_capacities=(100,), pair_chunks=(64,))


def test_exact_sizing_fits_the_rows_it_measured_and_nothing_less():
    """Prediction's sizing (no margin, no scaling to the budget) on rows at any offset: the engine drops
    nothing, and one site fewer at a level drops exactly one."""
    rng = np.random.default_rng(3)
    grid = np.unique(rng.integers(0, 40, (300, 3)), axis=0).astype(np.int32) + [5, 3, 17]
    n = 512
    stats = sparse.sizing.measure([grid])
    spec = sparse.sizing.spec_from_stats(stats, n, margin=1.0, scale_to_budget=False, multiple=1)
    brute = [len({tuple(p // 2 ** level) for p in grid}) for level in range(1, 5)]
    assert spec.capacities == (n, *brute)
    padded = np.zeros((n, 3), np.int32)
    padded[:len(grid)] = grid
    mask = np.arange(n) < len(grid)
    h = build(padded, mask, spec)
    assert int(np.sum(h.dropped_sites)) == 0 and int(np.sum(h.dropped_pairs)) == 0
    tight = list(spec.capacities)
    tight[2] -= 1
    h = build(padded, mask, dataclasses.replace(spec, capacities=tuple(tight)))
    assert int(h.dropped_sites[2]) == 1


def test_pair_chunk_halves_until_the_products_pad_at_most_the_goal():
    """50 pairs per tap at a level of 100k sites (default chunk 8192, tail 2048): whole tail chunks of
    2048 / ... / 16 pad 1 - 50/64 = 22 % down to chunk 64; chunk 32 computes 32 + 3 x 8 = 56 (10.7 %);
    chunk 16 computes 48 + 4 = 52 (3.8 %). 47,000 pairs per tap keep the default (0.2 %)."""
    assert sparse.hierarchy.default_pair_chunk(100000) == 8192
    assert sparse.sizing.pair_chunk(np.full((1, 13), 50), 100000) == 16
    assert sparse.sizing.pair_chunk(np.full((1, 13), 50), 100000, padding=0.11) == 32
    assert sparse.sizing.pair_chunk(np.full((3, 13), 47000), 100000) == 8192
    assert sparse.sizing.pair_chunk(np.zeros((1, 13)), 1000) == sparse.hierarchy.default_pair_chunk(1000)
    assert sparse.sizing.pair_chunk(np.ones((1, 13)), 1000) == sparse.sizing.MIN_PAIR_CHUNK


def test_sizing_measures_sites_and_pairs_like_the_hierarchy(scene):
    coords, mask, h = scene
    stats = sparse.sizing.measure([coords[mask]], levels=4)
    np.testing.assert_array_equal(stats["sites"][0], [int(np.sum(m)) for m in h.masks])
    taps = [np.sum(np.asarray(h.nbr[lv][3]) < 400, axis=0)[:13] for lv in range(4)]
    np.testing.assert_array_equal(stats["tap_pairs"][0], taps)
    pairs = [int(t.sum()) for t in taps]
    np.testing.assert_array_equal(stats["pairs"][0], pairs)
    spec = sparse.sizing.spec_from_stats(stats, 400, form="pairs", pair_levels=(0, 1))
    assert spec.pair_chunks == tuple(sparse.sizing.pair_chunk(stats["tap_pairs"][:, lv], c)
                                     for lv, c in enumerate(spec.capacities))
    for row in sparse.sizing.padding_report(spec, stats)[:2]:
        assert 0 <= row["pair_waste"] <= sparse.sizing.PRODUCT_PADDING
    assert spec.capacities[0] == 400 and all(c >= s for c, s in zip(spec.capacities, stats["sites"][0]))
    assert spec.pair_capacities[2:] == (0, 0) and spec.pair_capacities[0] >= pairs[0]
    with pytest.raises(ValueError, match="conv_form"):
        sparse.sizing.spec_from_stats(stats, 400, form="sparse")
