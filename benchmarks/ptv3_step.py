"""The trainer's PTv3 + PPT train step on one room crop, and Pointcept's PT-v3m1 on CPU beside it.

    python -m benchmarks.ptv3_step                           # 100k sites, float32, the recipe's model
    python -m benchmarks.ptv3_step --sites 4000 --runs 1     # quick look
    python -m benchmarks.ptv3_step --remat                   # recompute attention in the backward pass
    python -m benchmarks.ptv3_step --sites 4000 --profile    # where the step's time goes
    POINTCEPT_ROOT=/path/to/Pointcept /tmp/venv-ref/bin/python -m benchmarks.ptv3_step --peer[_only]

The step is `ppt_jax.train.step.make_train_step` with configs/joint_ptv3.py's model (PTv3 defaults:
the reference's recipe), loss (CE + Lovasz) and optimizer (AdamW, "block" group, clipping), hierarchy
built inside the step, on a 1-device mesh. The crop is benchmarks/sparse_conv.room_surface (a
ScanNet-like room surface) with level capacities from `ppt_jax.sparse.sizing`. --peer (needs torch,
spconv, timm, addict and a Pointcept checkout, see benchmarks/pointcept_reference.py) also times the
reference's PPT-v1m1(PT-v3m1) forward + backward of the same crop on CPU (enable_flash=False, one torch
thread: spconv's CPU kernels are only correct with one), and prints both parameter counts.
Times are medians of --runs calls after a warm-up; the load average is printed at start and end. The
process stops itself (exit 3, the figure printed) when its resident memory passes --max_rss_gib.
"""

import argparse
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import step_profile
from benchmarks.model_step import load, synthetic_batch, text_table
from benchmarks.sparse_conv import interleaved, peak_rss_gb
from configs import joint_ptv3
from ppt_jax import labels, sparse
from ppt_jax.sparse import sizing
from ppt_jax.train import optim, setup, sharding, step as step_lib


def build_step(batch, args):
    cfg = joint_ptv3.get_config("reference")      # the recipe's model (no shards needed to build it)
    cfg.model.dtype = args.dtype
    cfg.model.ptv3.remat_attention = args.remat
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
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    return spec, h, state, compiled, time.perf_counter() - t0


def guard_rss(limit_gib):
    """Stop the process (exit 3, the figure printed) as soon as its resident memory passes the limit."""
    def watch():
        while True:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20
            if rss > limit_gib:
                print(f"stopped: resident memory {rss:.2f} GiB > --max_rss_gib {limit_gib}; {load()}", flush=True)
                os._exit(3)
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def peer(batch, runs):
    """Pointcept's PPT-v1m1(PT-v3m1 recipe, backbone_mode) forward + backward on the crop (seconds)."""
    import torch
    from addict import Dict

    from benchmarks import pointcept_reference as ref

    _, _, _, ppt = ref.load()
    cfg = dict(ref.RECIPE, enable_flash=False)
    model = ppt.PointPromptTraining(backbone=Dict(type="PT-v3m1", **cfg), criteria=[], backbone_mode=True)
    model.train()
    n = int(batch["mask"].sum())
    grid = torch.from_numpy(batch["grid_coord"][0, :n].astype(np.int32))
    data = lambda: {"coord": grid.float() * 0.02, "grid_coord": grid, "offset": torch.tensor([n]),
                    "feat": torch.from_numpy(batch["feat"][0, :n]), "condition": ["ScanNet"]}

    def step():
        model.zero_grad()
        model(data()).square().mean().backward()

    (t,) = interleaved([step], runs)
    return t, sum(p.numel() for p in model.backbone.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--form", default="pairs", help="sparse conv form: pairs | dense")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", action="store_true", help="model.ptv3.remat_attention")
    ap.add_argument("--peer", action="store_true", help="also time Pointcept's PT-v3m1 (torch, CPU)")
    ap.add_argument("--peer_only", action="store_true",
                    help="time only Pointcept's PT-v3m1 (its own peak memory; parameters of both counted)")
    ap.add_argument("--profile", action="store_true", help="per kind / level table from XLA's trace")
    ap.add_argument("--max_rss_gib", type=float, default=8.0, help="stop when resident memory passes this")
    args = ap.parse_args()
    guard_rss(args.max_rss_gib)
    print(f"start: {load()}; jax {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
    batch = synthetic_batch(args.sites)
    if args.peer_only:
        cfg = joint_ptv3.get_config("reference")
        model = setup.build_model(cfg, text_table())
        spec = sparse.HierarchySpec((64, 32, 16, 8, 8))
        h = step_lib.build_hierarchies(jnp.zeros((1, 64, 3), jnp.int32), jnp.zeros((1, 64), bool), spec)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 6)), h, batch["condition"])
        t_ref, n_ref = peer(batch, args.runs)
        print(f"Pointcept PT-v3m1 (torch CPU, 1 thread, enable_flash=False), {args.sites} sites: forward + "
              f"backward {t_ref:.2f} s; backbone parameters {n_ref:,} (ours {count(shapes['params']['backbone']):,}); "
              f"peak RSS {peak_rss_gb():.2f} GiB; {load()}", flush=True)
        return
    t0, c0 = time.perf_counter(), time.process_time()
    spec, h, state, compiled, compile_s = build_step(batch, args)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    params = state.params
    print(f"ptv3 ({args.dtype}, remat {args.remat}, {args.form}): capacities {spec.capacities}; sites per level "
          f"{[int(np.sum(np.asarray(m))) for m in h.masks]}; compile {compile_s:.1f} s (set-up + lower + compile "
          f"{build_s:.1f} s, {build_cpu:.1f} s CPU); parameters: backbone {count(params['backbone']):,}, PPT total "
          f"{count(params):,}", flush=True)
    holder = {"state": state}

    def run():
        new, metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)
        holder["state"] = new

    (t,) = interleaved([run], args.runs)
    print(f"ptv3: train step {t:.2f} s ({args.sites / t:,.0f} sites/s); peak RSS {peak_rss_gb():.2f} GiB; "
          f"{load()}", flush=True)
    if args.profile:
        t0 = time.perf_counter()
        table, total = step_profile.profile(run, (), compiled.as_text(), runs=1)
        step_profile.print_profile(table, total, time.perf_counter() - t0 - step_profile.LAST_WARMUP[0],
                                   (compiled.cost_analysis() or {}).get("flops"))
    if args.peer:
        t_ref, n_ref = peer(batch, args.runs)
        print(f"Pointcept PT-v3m1 (torch CPU, 1 thread, enable_flash=False): forward + backward {t_ref:.2f} s; "
              f"backbone parameters {n_ref:,} (ours {count(params['backbone']):,}); "
              f"peak RSS {peak_rss_gb():.2f} GiB")
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
