"""The trainer's own SpUNet-v1m3 + PDNorm train step on one room crop: time, memory, profile, peer.

    python -m benchmarks.model_step                          # 100k sites, both conv forms, in turns
    python -m benchmarks.model_step --profile                # + where the step's time goes (per kind, level)
    python -m benchmarks.model_step --forms pairs --eval     # + eval forward, 13-view voting throughput
    python -m benchmarks.model_step --sites 20000 --runs 2   # quick look

The step is `ppt_jax.train.step.make_train_step` (hierarchy built inside, loss, gradients, the
reference's SGD + OneCycle update, non-finite guard) on a 1-device mesh, with the reference model
(configs/base.py widths, adaptive decoupled PDNorm, language head). The crop is a synthetic ScanNet-like
room surface (benchmarks/sparse_conv.room_surface); level capacities are the crop's exact sizes plus the
margin `ppt_jax.sparse.sizing` adds for training. Forms: 'dense' = 27 taps everywhere, 'pairs' = the
exact-pair form at every level (`sizing.spec_from_stats`). Times are medians of --runs calls after a warm-up,
forms timed in turns; the load average is printed at start and end (a figure under load is noise).
Product counts: 2 x (pairs + sites) x C_in x C_out per 3x3x3 conv, x3 for forward + backward.
"""

import argparse
import ctypes
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import step_profile
from benchmarks.sparse_conv import interleaved, peak_rss_gb, room_surface
from configs import joint as joint_config
from ppt_jax import host_memory, labels, models, sparse
from ppt_jax.sparse import sizing
from ppt_jax.train import optim, sharding, step as step_lib


def synthetic_batch(n_sites, seed=0):
    coords = room_surface(n_sites, seed)
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(len(coords), 3))
    feat = np.concatenate([rng.random((len(coords), 3)),
                           normal / np.linalg.norm(normal, axis=1, keepdims=True)], 1)
    return {"grid_coord": coords[None].astype(np.int32), "mask": np.ones((1, len(coords)), bool),
            "feat": feat[None].astype(np.float32), "segment": rng.integers(0, 20, (1, len(coords))).astype(np.int32),
            "condition": np.array([labels.DATASETS.index("ScanNet")], np.int32)}


def load():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def step_peak_rss_gib(fn):
    """Peak resident memory (GiB) of this process while `fn` runs: Linux's VmHWM, reset first through
    /proc/self/clear_refs (so compilation peaks before it do not count). The heap memory that compilation
    freed is handed back first (glibc's malloc_trim): otherwise the process keeps ~2.8 GiB of it."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM"))
    return int(hwm.split()[1]) / 2**20


def text_table(seed=1):
    t = np.random.default_rng(seed).normal(size=(len(labels.UNION_NAMES), 512))
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def products(h, channels):
    """Exact products of the 3x3x3 convs (active pairs incl. the centre) and of the dense 27-tap form."""
    act = [float(np.sum(np.asarray(h.nbr[lv][3]) < h.masks[lv].shape[-1])) for lv in range(len(h.masks))]
    sites = [float(np.sum(np.asarray(m))) for m in h.masks]
    exact = dense = 0.0
    for level, cin, cout in channels:
        exact += 2 * act[level] * cin * cout
        dense += 2 * 27 * sites[level] * cin * cout
    return exact, dense


def conv_channels(params):
    """(level, C_in, C_out) of every 3x3x3 subm conv kernel in the params (by module path)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(p, "key", "") for p in path]
        if names[-1] == "kernel" and leaf.ndim == 3 and leaf.shape[0] == 27:
            level = step_profile.level_of("/".join(names))
            out.append((level, leaf.shape[1], leaf.shape[2]))
    return out


def build_step(form, batch, dtype, runs_total):
    crops = [np.asarray(g)[np.asarray(m)] for g, m in zip(batch["grid_coord"], batch["mask"])]
    stats = sizing.measure(crops)
    spec = sizing.spec_from_stats(stats, batch["mask"].shape[1], form=form)
    model = models.PPT(labels.DATASETS, text_table=text_table(), dtype=jnp.dtype(dtype))
    cfg = joint_config.get_config()
    tx, lr_fn = optim.make_optimizer(cfg.optim, max(runs_total, 2))
    mesh = sharding.make_mesh(jax.devices()[:1])
    h = jax.jit(lambda g, m: step_lib.build_hierarchies(g, m, spec))(batch["grid_coord"], batch["mask"])
    sparse.check_hierarchy(h, "room")
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["feat"], h, batch["condition"])
    state = step_lib.TrainState(step=jnp.int32(0), params=variables["params"],
                                batch_stats=variables["batch_stats"],
                                opt_state=tx.init(variables["params"]),
                                rng=jax.random.key_data(jax.random.PRNGKey(0)))
    train_step = step_lib.make_train_step(model, tx, lr_fn, spec, len(labels.DATASETS), mesh)
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    return spec, stats, model, h, state, compiled, compile_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--forms", default="dense,pairs")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--profile", action="store_true", help="per kind / level table from XLA's trace")
    ap.add_argument("--peer", choices=["spconv"], help="time the same step in torch + spconv, in turns")
    ap.add_argument("--top", type=int, default=0, help="with --profile: also list the N longest instructions")
    ap.add_argument("--eval", action="store_true", help="eval forward and 13-view voting throughput")
    ap.add_argument("--default_malloc", action="store_true",
                    help="leave glibc's malloc as it is (the trainer applies host_memory.keep_freed_memory)")
    args = ap.parse_args()
    kept = False if args.default_malloc else host_memory.keep_freed_memory()
    print(f"start: {load()}; jax {jax.__version__} on {jax.devices()[0].device_kind}; freed memory kept "
          f"mapped (host_memory): {kept}")

    batch = synthetic_batch(args.sites)
    runs = {}
    for form in args.forms.split(","):
        spec, stats, model, h, state, compiled, compile_s = build_step(form, batch, args.dtype, args.runs + 2)
        flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
        exact, dense = products(h, conv_channels(state.params))
        build = jax.jit(lambda g, m, spec=spec: step_lib.build_hierarchies(g, m, spec))
        print(f"{form}: capacities {spec.capacities}, pair capacities {spec.pair_capacities}; sites per level "
              f"{[int(np.sum(np.asarray(m))) for m in h.masks]}; compile {compile_s:.1f} s; 3x3x3 conv products "
              f"fwd+bwd exact {3 * exact / 1e9:.0f} GFLOP, dense {3 * dense / 1e9:.0f} GFLOP; "
              f"XLA cost analysis {flops / 1e9:.0f} GFLOP (while-loop bodies counted once)")
        print(f"{form}: padding by level, sites / pair products: " + ", ".join(
            f"{r['site_waste']:.1%} / " + ("-" if r["pair_waste"] is None else f"{r['pair_waste']:.1%}")
            for r in sizing.padding_report(spec, stats)))
        holder = {"state": state}

        def run_step(compiled=compiled, holder=holder):
            new, metrics = compiled(holder["state"], batch)
            jax.block_until_ready(metrics)
            holder["state"] = new

        runs[form] = (run_step, lambda build=build: jax.block_until_ready(build(batch["grid_coord"], batch["mask"])),
                      compiled, holder, model, spec)

    forms = list(runs)
    fns = [runs[f][0] for f in forms] + [runs[f][1] for f in forms]
    if args.peer:
        from benchmarks import spconv_peer
        peer_step, peer_eval, peer_params = spconv_peer.make_step(
            batch["grid_coord"][0], batch["feat"][0], batch["segment"][0])
        print(f"peer: torch + spconv SpUNet-v1m3 (benchmarks/spconv_peer.py), {peer_params:,} parameters, 1 thread")
        fns.append(peer_step)
    times = interleaved(fns, args.runs)
    for i, form in enumerate(forms):
        step_s, build_s = times[i], times[len(forms) + i]
        rss = step_peak_rss_gib(runs[form][0])
        temp = runs[form][2].memory_analysis().temp_size_in_bytes / 2**30
        print(f"{form}: train step {step_s:.2f} s; kernel maps {build_s:.3f} s = {build_s / step_s:.1%} of the "
              f"step; peak RSS during a step {rss:.2f} GiB (the whole process); XLA temp buffer {temp:.2f} GiB")
    if len(forms) == 2:
        print(f"ratio {forms[1]} / {forms[0]}: {times[1] / times[0]:.2f}")
    if args.peer:
        print(f"spconv: train step {times[-1]:.2f} s; ratio ours / spconv: "
              + ", ".join(f"{f} {times[i] / times[-1]:.2f}" for i, f in enumerate(forms)))

    if args.profile:
        for form in forms:
            run_step, _, compiled, _, _, _ = runs[form]
            print(f"\nprofile, {form} form:")
            t0 = time.perf_counter()
            table, total = step_profile.profile(run_step, (), compiled.as_text(), runs=1, top=args.top)
            step_profile.print_profile(table, total, time.perf_counter() - t0 - step_profile.LAST_WARMUP[0],
                                       (compiled.cost_analysis() or {}).get("flops"))

    if args.eval:
        for form in forms:
            _, _, _, holder, model, spec = runs[form]
            st = holder["state"]
            variables = {"params": st.params, "batch_stats": st.batch_stats}
            fwd = jax.jit(lambda v, b: model.apply(
                v, b["feat"], step_lib.build_hierarchies(b["grid_coord"], b["mask"], spec), b["condition"]))
            evals = [lambda: jax.block_until_ready(fwd(variables, batch))] + ([peer_eval] if args.peer else [])
            t_eval = interleaved(evals, args.runs)
            print(f"{form}: eval forward (hierarchy included) {t_eval[0]:.2f} s = {args.sites / t_eval[0]:,.0f} "
                  f"sites/s" + (f"; spconv {t_eval[1]:.2f} s, ratio {t_eval[0] / t_eval[1]:.2f}" if args.peer else ""))
            vote = step_lib.make_vote_step(model, spec, sharding.make_mesh(jax.devices()[:1]))
            vbatch = dict(batch, index=np.arange(args.sites, dtype=np.int32)[None])

            def thirteen_views():
                votes = jnp.zeros((args.sites, max(labels.num_classes(d) for d in labels.DATASETS)), jnp.float32)
                for _ in range(13):
                    votes, _ = vote(variables, votes, vbatch)
                jax.block_until_ready(votes)

            t_vote = interleaved([thirteen_views], max(args.runs // 2, 1))[0]
            print(f"{form}: 13-view voting (the trainer's vote step, 13 passes of the crop) {t_vote:.2f} s = "
                  f"{args.sites / t_vote:,.0f} sites/s, {t_vote / 13 / t_eval[0]:.2f}x one eval forward per view")
    print(f"end: {load()}; peak RSS {peak_rss_gb():.2f} GiB")


if __name__ == "__main__":
    main()
