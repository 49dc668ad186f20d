"""The trainer's PTv3 + PPT train step on one room crop, and Pointcept's PT-v3m1 on CPU beside it.

    python -m benchmarks.ptv3_step                           # 100k sites, float32, the recipe's model
    python -m benchmarks.ptv3_step --sites 4000 --runs 1     # quick look
    python -m benchmarks.ptv3_step --sites 4000 --profile    # where the step's time goes
    POINTCEPT_ROOT=/path/to/Pointcept /tmp/venv-ref/bin/python -m benchmarks.ptv3_step --peer \
        --peer_sites 4000,8000                               # both, in turns (Pointcept at other sizes)
    ... --peer_only --sites 4000                             # Pointcept alone

The step is `ppt_jax.train.step.make_train_step` with configs/joint_ptv3.py's model (PTv3 defaults:
the reference's recipe), loss (CE + Lovasz) and optimizer (AdamW, "block" group, clipping), hierarchy
built inside the step, on a 1-device mesh, with what the backward pass recomputes and the attention
chunks set by --remat / --attention_chunk (model.ptv3.remat / attention_chunk; same numbers): by
default whole blocks and 16 patches per call, which the 100k-site step needs to stay near 8 GiB
(benchmarks/README.md has the XLA temp buffer of each choice). The crop is benchmarks/sparse_conv.room_surface (a
ScanNet-like room surface) with level capacities from `ppt_jax.sparse.sizing`. --peer (needs torch,
spconv, timm, addict and a Pointcept checkout, see benchmarks/pointcept_reference.py) also times the
reference's PPT-v1m1(PT-v3m1) forward + backward on CPU (enable_flash=False, one torch thread: spconv's
CPU kernels are only correct with one) on crops of --peer_sites, in turns with ours, and prints both
parameter counts. Its memory grows with the crop (each block keeps its (patches, heads, 1024, 1024)
attention for the backward pass), so at 100k sites it is measured at smaller sizes and extrapolated,
printed as such: a line through the sizes, and the largest size's time per site. Both are likely low:
its coarse levels attend within patches of min(sites of the level, 1024), which grow with the crop.
Every run's seconds are printed with the median, after a first call of each (its seconds printed too)
whose peak resident memory (VmHWM, reset first) is the step's; the load average is printed at start,
after each round and at the end. The process stops itself (exit 3, the figure printed) when its
resident memory passes --max_rss_gib.
"""

import argparse
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import step_profile
from benchmarks.model_step import load, step_peak_rss_gib, synthetic_batch, text_table
from benchmarks.sparse_conv import peak_rss_gb
from configs import joint_ptv3
from ppt_jax import labels, sparse
from ppt_jax.sparse import sizing
from ppt_jax.train import optim, setup, sharding, step as step_lib


def build_step(batch, args):
    cfg = joint_ptv3.get_config("reference")      # the recipe's model (no shards needed to build it)
    cfg.model.dtype = args.dtype
    cfg.model.ptv3.remat = args.remat
    cfg.model.ptv3.attention_chunk = args.attention_chunk
    model = setup.build_model(cfg, text_table())
    spec = sizing.spec_for_batch(batch["grid_coord"], batch["mask"], form=args.form)
    tx, lr_fn = optim.make_optimizer(cfg.optim, max(args.runs + 2, 2))
    mesh = sharding.make_mesh(jax.devices()[:1])
    h = jax.jit(lambda g, m: step_lib.build_hierarchies(g, m, spec))(batch["grid_coord"], batch["mask"])
    sparse.check_hierarchy(h, "room")
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["feat"], h, batch["condition"])
    state = step_lib.TrainState(step=jnp.int32(0), params=variables["params"],
                                batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                                rng=jax.random.key_data(jax.random.PRNGKey(0)))
    train_step = step_lib.make_train_step(model, tx, lr_fn, spec, len(labels.DATASETS), mesh)
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = train_step.lower(state, batch)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    memory = compiled.memory_analysis()
    timing = (f"lower {t1 - t0:.1f} s ({c1 - c0:.1f} s CPU), compile {t2 - t1:.1f} s ({c2 - c1:.1f} s CPU); "
              f"XLA temp buffer {memory.temp_size_in_bytes / 2**30:.2f} GiB")
    return spec, h, state, compiled, timing


def resident_gib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20


def guard_rss(limit_gib):
    """Stop the process (exit 3, the figure printed) as soon as its resident memory passes the limit."""
    def watch():
        while True:
            rss = resident_gib()
            if rss > limit_gib:
                print(f"stopped: resident memory {rss:.2f} GiB > --max_rss_gib {limit_gib}; {load()}", flush=True)
                os._exit(3)
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def reference_steps(sizes):
    """Pointcept's PPT-v1m1(PT-v3m1 recipe, backbone_mode) forward + backward on a crop of each size
    (callables), and its backbone parameter count."""
    import torch
    from addict import Dict

    from benchmarks import pointcept_reference as ref

    _, _, _, ppt = ref.load()
    cfg = dict(ref.RECIPE, enable_flash=False)
    model = ppt.PointPromptTraining(backbone=Dict(type="PT-v3m1", **cfg), criteria=[], backbone_mode=True)
    model.train()

    def step_for(n):
        batch = synthetic_batch(n)
        grid = torch.from_numpy(batch["grid_coord"][0].astype(np.int32))
        data = lambda: {"coord": grid.float() * 0.02, "grid_coord": grid, "offset": torch.tensor([len(grid)]),
                        "feat": torch.from_numpy(batch["feat"][0]), "condition": ["ScanNet"]}

        def step():
            model.zero_grad()
            model(data()).square().mean().backward()
        return step

    return [step_for(n) for n in sizes], sum(p.numel() for p in model.backbone.parameters())


def in_turns(steps, runs):
    """{name: (step peak RSS GiB, [seconds of each run])}: a first call of each (warm-up, its peak memory
    measured, its seconds printed), then `runs` rounds of one call each in turn, so that load drift hits
    all alike."""
    peaks = {}
    for name, fn in steps.items():
        t = time.perf_counter()
        peaks[name] = step_peak_rss_gib(fn)
        print(f"  first call (warm-up): {name} {time.perf_counter() - t:.2f} s, step peak RSS {peaks[name]:.2f} GiB; "
              f"{load()}", flush=True)
    times = {name: [] for name in steps}
    for r in range(runs):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()) + f"; {load()}",
              flush=True)
    return {name: (peaks[name], times[name]) for name in steps}


def extrapolate(sizes, seconds, at):
    """Two estimates of the time at `at` sites: the least-squares line through (sizes, seconds), and the
    largest size's seconds per site times `at`."""
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    return a + b * at, seconds[-1] / sizes[-1] * at


def backbone_count():
    """Backbone parameters of the recipe's model, from shapes only (a tiny hierarchy)."""
    model = setup.build_model(joint_ptv3.get_config("reference"), text_table())
    spec = sparse.HierarchySpec((64, 32, 16, 8, 8))
    h = step_lib.build_hierarchies(jnp.zeros((1, 64, 3), jnp.int32), jnp.zeros((1, 64), bool), spec)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 6)), h, jnp.zeros((1,), jnp.int32))
    return count(shapes["params"]["backbone"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--form", default="pairs", help="sparse conv form: pairs | dense")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", default="block", help="model.ptv3.remat: none | attention | block")
    ap.add_argument("--attention_chunk", type=int, default=16, help="model.ptv3.attention_chunk")
    ap.add_argument("--peer", action="store_true", help="also time Pointcept's PT-v3m1 (torch, CPU), in turns")
    ap.add_argument("--peer_only", action="store_true", help="time only Pointcept's PT-v3m1")
    ap.add_argument("--peer_sites", default="",
                    help="comma-separated crop sizes for Pointcept (default --sites); with other sizes than "
                         "--sites its time there is also extrapolated along a line through them")
    ap.add_argument("--profile", action="store_true", help="per kind / level table from XLA's trace")
    ap.add_argument("--max_rss_gib", type=float, default=8.0, help="stop when resident memory passes this")
    args = ap.parse_args()
    guard_rss(args.max_rss_gib)
    print(f"start: {load()}; jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
    steps = {}
    if not args.peer_only:
        batch = synthetic_batch(args.sites)
        t0, c0 = time.perf_counter(), time.process_time()
        spec, h, state, compiled, timing = build_step(batch, args)
        ours = count(state.params["backbone"])
        print(f"ptv3 ({args.dtype}, remat {args.remat}, attention_chunk {args.attention_chunk}, {args.form}), "
              f"{args.sites} sites: capacities "
              f"{spec.capacities}; sites per level {[int(np.sum(np.asarray(m))) for m in h.masks]}; {timing}; "
              f"set-up + lower + compile {time.perf_counter() - t0:.1f} s ({time.process_time() - c0:.1f} s CPU); "
              f"parameters: backbone {ours:,}, PPT total {count(state.params):,}; resident "
              f"{resident_gib():.2f} GiB; {load()}", flush=True)
        holder = {"state": state}

        def run():
            new, metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics)
            holder["state"] = new
        steps["ptv3"] = run
    else:
        ours = backbone_count()
    peer_sizes = [int(n) for n in args.peer_sites.split(",") if n] or [args.sites]
    if args.peer or args.peer_only:
        ref_steps, n_ref = reference_steps(peer_sizes)
        steps.update({f"Pointcept {n}": fn for n, fn in zip(peer_sizes, ref_steps)})
        same = "equal" if n_ref == ours else "DIFFERENT"
        print(f"backbone parameters: Pointcept PT-v3m1 {n_ref:,}, ours {ours:,} ({same})", flush=True)
    results = in_turns(steps, args.runs)
    for name, (peak, times) in results.items():
        n = args.sites if name == "ptv3" else int(name.split()[-1])
        what = ("our train step (forward, loss, backward, AdamW)" if name == "ptv3" else
                "Pointcept PT-v3m1 forward + backward (torch CPU, 1 thread, enable_flash=False)")
        print(f"{what}, {n} sites: median {np.median(times):.2f} s over {len(times)} runs "
              f"({', '.join(f'{t:.2f}' for t in times)}; {n / np.median(times):,.0f} sites/s); "
              f"step peak RSS {peak:.2f} GiB (process)", flush=True)
    if (args.peer or args.peer_only) and args.sites not in peer_sizes and len(peer_sizes) > 1:
        sizes = sorted(peer_sizes)
        line, rate = extrapolate(sizes, [np.median(results[f"Pointcept {n}"][1]) for n in sizes], args.sites)
        print(f"Pointcept at {args.sites} sites, EXTRAPOLATED (not measured): {line:.1f} s along the line through "
              f"{sizes}, {rate:.1f} s at the {sizes[-1]}-site crop's time per site", flush=True)
    if args.profile and "ptv3" in steps:
        t0 = time.perf_counter()
        table, total = step_profile.profile(steps["ptv3"], (), compiled.as_text(), runs=1)
        step_profile.print_profile(table, total, time.perf_counter() - t0 - step_profile.LAST_WARMUP[0],
                                   (compiled.cost_analysis() or {}).get("flops"))
    print(f"end: {load()}; process peak RSS {peak_rss_gb():.2f} GiB")


if __name__ == "__main__":
    main()
