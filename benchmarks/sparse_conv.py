"""Sparse-engine speed on a synthetic room surface at 2 cm (~100k sites): kernel maps and submanifold convs.

    python -m benchmarks.sparse_conv                  # build + subm 3x3x3 at 32/64/128 ch, f32 and bf16
    python -m benchmarks.sparse_conv --forms          # also: conv forms and searchsorted methods compared
    python -m benchmarks.sparse_conv --peer spconv    # same conv, same sites, spconv (torch, 1 thread)

GFLOP/s count only products with an active neighbour (2 * pairs * C_in * C_out per forward, 3x that for
forward + backward), i.e. the work spconv does; the dense (sites, 27) gather-matmul does more.
Times are medians after a warm-up run; peak RSS is the process's high-water mark so far.
"""

import argparse
import importlib.metadata
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ppt_jax import sparse

VOXEL = 0.02


def room_surface(n_sites=100_000, seed=0):
    """Voxel coords (n, 3) int32 of a room scan: floor, ceiling, 4 walls, axis-aligned and rotated boxes,
    3 mm sensor noise; cropped to the n_sites voxels nearest a random point (Pointcept's SphereCrop)."""
    rng = np.random.default_rng(seed)
    size = np.array([6.0, 5.0, 2.6])

    def plane(origin, u, v, density=15_000):
        n = int(density * np.linalg.norm(u) * np.linalg.norm(v))
        a, b = rng.random((2, n, 1))
        return origin + a * u + b * v

    ex, ey, ez = np.eye(3)
    sx, sy, sz = size
    parts = [plane(0 * ex, sx * ex, sy * ey), plane(sz * ez, sx * ex, sy * ey),
             plane(0 * ex, sx * ex, sz * ez), plane(sy * ey, sx * ex, sz * ez),
             plane(0 * ex, sy * ey, sz * ez), plane(sx * ex, sy * ey, sz * ez)]
    for _ in range(12):  # furniture: boxes standing on the floor, some rotated about z
        w, d, h = rng.uniform([0.3, 0.3, 0.4], [1.6, 1.0, 1.2])
        c = rng.uniform([0.5, 0.5], [sx - 0.5, sy - 0.5])
        t = rng.uniform(0, np.pi / 2) if rng.random() < 0.5 else 0.0
        rx = np.array([np.cos(t), np.sin(t), 0.0]) * w
        ry = np.array([-np.sin(t), np.cos(t), 0.0]) * d
        o = np.array([c[0], c[1], 0.0]) - rx / 2 - ry / 2
        hz = ez * h
        parts += [plane(o + hz, rx, ry), plane(o, rx, hz), plane(o + ry, rx, hz), plane(o, ry, hz),
                  plane(o + rx, ry, hz)]
    pts = np.concatenate(parts)
    pts += rng.normal(scale=0.003, size=pts.shape)
    vox = np.unique(np.floor(pts / VOXEL + 0.5).astype(np.int32), axis=0)  # walls at voxel centres
    vox -= vox.min(axis=0)
    centre = vox[rng.integers(len(vox))]
    keep = np.argsort(np.sum((vox - centre) ** 2, axis=1), kind="stable")[:n_sites]
    return vox[np.sort(keep)]


def median_time(fn, *args, runs=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved(fns, runs):
    """Median seconds of each callable, timed in turns (ABAB...) so that load drift hits all alike."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(runs):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_spec(coords, maps="derived", method="scan"):
    n = len(coords)
    caps = [n]
    for level in range(1, 5):
        true = len(np.unique(coords >> level, axis=0))
        caps.append(int(true * 1.1) + 8)
    return sparse.HierarchySpec(capacities=tuple(caps), neighbour_maps=maps, search_method=method)


def bench_build(coords, spec, runs):
    mask = np.ones(len(coords), bool)
    build = jax.jit(sparse.build_hierarchy, static_argnums=2)
    t = median_time(build, coords, mask, spec, runs=runs)
    h = build(coords, mask, spec)
    sparse.check_hierarchy(h, "room")
    return h, t


def subm_fns(h, level=0):
    def fwd(x, w):
        return sparse.subm_conv(x, h, level, w)

    def fwd_bwd(x, w, ct):
        y, vjp = jax.vjp(fwd, x, w)
        return vjp(ct.astype(y.dtype))

    return jax.jit(fwd), jax.jit(fwd_bwd)


def bench_subm(h, pairs, runs):
    n = h.masks[0].shape[0]
    rng = np.random.default_rng(0)
    fwd, fwd_bwd = subm_fns(h)
    print("\nsubmanifold 3x3x3 conv at level 0 (C -> C), median of", runs)
    print(f"{'dtype':>9} {'C':>4} {'fwd s':>8} {'fwd+bwd s':>10} {'fwd Msites/s':>13} {'fwd GFLOP/s':>12}"
          f" {'f+b GFLOP/s':>12} {'peak RSS GB':>12}")
    for dtype in (jnp.float32, jnp.bfloat16):
        for c in (32, 64, 128):
            x = jnp.asarray(rng.normal(size=(n, c)), dtype)
            w = jnp.asarray(rng.normal(size=(27, c, c)) * 0.05, dtype)
            ct = jnp.asarray(rng.normal(size=(n, c)), dtype)
            tf = median_time(fwd, x, w, runs=runs)
            tb = median_time(fwd_bwd, x, w, ct, runs=runs)
            flops = 2 * pairs * c * c
            print(f"{jnp.dtype(dtype).name:>9} {c:>4} {tf:8.3f} {tb:10.3f} {n / tf / 1e6:13.2f} "
                  f"{flops / tf / 1e9:12.1f} {3 * flops / tb / 1e9:12.1f} {peak_rss_gb():12.2f}")


def bench_forms(h, pairs, coords, runs):
    """The library's conv against other forms (autodiff backward) on the same table."""
    nbr = h.nbr[0][3]
    n, c = nbr.shape[0], 32
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(27, c, c)) * 0.05, jnp.float32)
    ct = jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
    pad = lambda x: jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
    out_ids, taps = np.nonzero(np.asarray(nbr) < n)  # active pairs, sorted by output site
    in_ids = np.asarray(nbr)[out_ids, taps]

    def einsum_form(x, w):
        return jnp.einsum("ntc,tcd->nd", pad(x)[nbr], w)

    def scan_taps_form(x, w):
        xp = pad(x)
        return lax.scan(lambda acc, tw: (acc + xp[tw[0]] @ tw[1], None), jnp.zeros((n, w.shape[2])), (nbr.T, w))[0]

    def pairs_form(x, w):  # spconv's algorithm: per tap, its exact active pairs (counts fixed on the host)
        order = np.argsort(taps, kind="stable")
        bounds = np.searchsorted(taps[order], np.arange(28))
        src, dst = in_ids[order], out_ids[order]
        y = jnp.concatenate([x[src[a:b]] @ w[t] for t, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])
        return jax.ops.segment_sum(y, dst, n)

    def library_form(x, w):
        return sparse.subm_conv(x, h, 0, w)

    print(f"\nconv forms, 3x3x3 32->32, {n} sites, {pairs} active pairs (backward: the library's custom VJP; "
          "others: autodiff)")
    forms = [("library: chunked gather + (chunk,27C)@(27C,D), custom VJP", library_form),
             ("lax.scan over taps, gather + matmul", scan_taps_form), ("einsum over gathered (N,27,C)", einsum_form),
             ("exact pairs per tap + segment_sum", pairs_form)]
    for name, f in forms:
        fwd = jax.jit(f)
        fb = jax.jit(lambda x, w, ct, f=f: jax.vjp(f, x, w)[1](ct))
        ref = fwd(x, w)
        diff = float(jnp.max(jnp.abs(ref - library_form(x, w))))
        print(f"  {name:<60} fwd {median_time(fwd, x, w, runs=runs):7.3f} s   fwd+bwd "
              f"{median_time(fb, x, w, ct, runs=runs):7.3f} s   max|diff| {diff:.1e}")

    print("\nkernel maps for the whole hierarchy by neighbour_maps / searchsorted method")
    for maps, method in [("derived", "scan"), ("searched", "scan"), ("searched", "scan_unrolled"),
                         ("searched", "sort")]:
        _, t = bench_build(coords, make_spec(coords, maps, method), runs)
        print(f"  {maps:<9} {method:<14} {t:7.3f} s")


def bench_spconv(h, coords, runs):
    import torch
    import spconv.pytorch as spconv

    spconv.ops.get_current_stream = lambda: 0  # the CPU build's backward asks for a CUDA stream
    torch.set_num_threads(1)  # spconv's CPU kernels race with more threads (wrong rows)
    n = len(coords)
    rng = np.random.default_rng(2)
    print(f"\nspconv {importlib.metadata.version('spconv')} (torch "
          f"{torch.__version__}, 1 thread; XLA uses its default threads), same sites, float32, cached kernel "
          "maps, timed in turns; ratio = ours / spconv")
    fwd, fwd_bwd = subm_fns(h)
    for c in (32, 64, 128):
        x = rng.normal(size=(n, c)).astype(np.float32)
        w = (rng.normal(size=(27, c, c)) * 0.05).astype(np.float32)
        ct = rng.normal(size=(n, c)).astype(np.float32)
        conv = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="k")
        with torch.no_grad():  # ours (taps, in, out) -> spconv (out, kx, ky, kz, in)
            conv.weight.copy_(torch.from_numpy(w.reshape(3, 3, 3, c, c).transpose(4, 0, 1, 2, 3).copy()))
        idx = torch.from_numpy(np.concatenate([np.zeros((n, 1), np.int32), coords], 1))
        xt = torch.from_numpy(x).requires_grad_(True)
        shape = (coords.max(0) + 3).tolist()

        def run_fwd():
            st = spconv.SparseConvTensor(xt, idx, shape, 1)
            st.indice_dict = cache
            return conv(st).features

        st0 = spconv.SparseConvTensor(xt, idx, shape, 1)
        y0 = conv(st0)
        cache = y0.indice_dict
        ref = np.asarray(fwd(x, w))
        diff = np.abs(y0.features.detach().numpy() - ref).max()

        def spconv_fwd():
            with torch.no_grad():
                run_fwd()

        def spconv_fb():
            xt.grad = None
            conv.weight.grad = None
            run_fwd().backward(torch.from_numpy(ct))

        tf_s, tb_s, tf_j, tb_j = interleaved(
            [spconv_fwd, spconv_fb, lambda: jax.block_until_ready(fwd(x, w)),
             lambda: jax.block_until_ready(fwd_bwd(x, w, ct))], runs)
        print(f"  C={c:<4} spconv fwd {tf_s:.3f} s fwd+bwd {tb_s:.3f} s | ours fwd {tf_j:.3f} s fwd+bwd {tb_j:.3f} s"
              f" | ratio fwd {tf_j / tf_s:.2f} fwd+bwd {tb_j / tb_s:.2f} | max|diff| {diff:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--forms", action="store_true", help="compare conv forms and searchsorted methods")
    ap.add_argument("--peer", choices=["spconv"], help="run the same conv with this library too")
    ap.add_argument("--form", choices=sparse.sizing.FORMS, default="dense",
                    help="the conv form timed (pairs: exact active pairs, capacities from the crop)")
    args = ap.parse_args()
    print(f"start: load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")

    coords = room_surface(args.sites)
    spec = make_spec(coords) if args.form == "dense" else sparse.sizing.spec_for_batch(
        coords[None], np.ones((1, len(coords)), bool), "pairs")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; room surface: {len(coords)} sites at 2 cm, "
          f"capacities {spec.capacities}")
    h, t_build = bench_build(coords, spec, args.runs)
    pairs = int(np.sum(np.asarray(h.nbr[0][3]) < len(coords)))
    print("sites per level:", [int(m.sum()) for m in h.masks],
          f"| active 3x3x3 neighbours per site: {pairs / len(coords):.2f} of 27")
    print(f"kernel maps, whole hierarchy (5^3 + 3^3 at level 0, 3^3 at 1-4, down/up maps): {t_build:.3f} s "
          f"median of {args.runs}; peak RSS {peak_rss_gb():.2f} GB")
    bench_subm(h, pairs, args.runs)
    if args.forms:
        bench_forms(h, pairs, coords, args.runs)
    if args.peer == "spconv":
        bench_spconv(h, coords, args.runs)
    print(f"end: load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
