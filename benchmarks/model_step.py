"""Full PPT (SpUNet-v1m3, adaptive decoupled PDNorm, language head) step time on one synthetic room.

    python -m benchmarks.model_step                      # ~100k sites at 2 cm, float32 and bfloat16
    python -m benchmarks.model_step --sites 20000 --runs 2 --dtypes float32

Times (median after a warm-up run, on jax.default_backend()):
- build: the kernel-map hierarchy (sparse.build_hierarchy, jitted alone);
- fwd: train-mode forward (batch statistics) given the hierarchy;
- fwd+bwd: loss and gradients of all parameters given the hierarchy;
- step share: build / (build + fwd+bwd), the hierarchy's part of a train step that builds it inside.
Reference (spec §14): spconv SpUNet-v1m3 fwd+bwd 14.9 s on 2 CPU cores (1 thread, the only correct
setting). Target here: <= 7.5 s.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.sparse_conv import make_spec, median_time, peak_rss_gb, room_surface
from ppt_jax import labels, models, sparse


def synthetic_batch(n_sites, seed=0):
    coords = room_surface(n_sites, seed)
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(len(coords), 3))
    feat = np.concatenate([rng.random((len(coords), 3)),
                           normal / np.linalg.norm(normal, axis=1, keepdims=True)], 1)
    segment = rng.integers(0, 20, len(coords))
    return coords[None], np.ones((1, len(coords)), bool), feat[None].astype(np.float32), segment[None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()

    coords, mask, feat, segment = synthetic_batch(args.sites)
    spec = make_spec(coords[0])
    build = jax.jit(jax.vmap(lambda c, m: sparse.build_hierarchy(c, m, spec)))
    t_build = median_time(build, coords, mask, runs=args.runs)
    h = build(coords, mask)
    sparse.check_hierarchy(h, "room")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); sites per level "
          f"{[int(m.sum()) for m in h.masks]}; capacities {spec.capacities}")
    print(f"hierarchy build: {t_build:.3f} s")

    text = np.random.default_rng(1).normal(size=(len(labels.UNION_NAMES), 512))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cond = np.array([labels.DATASETS.index("ScanNet")], np.int32)
    for name in args.dtypes.split(","):
        model = models.PPT(labels.DATASETS, text_table=text, dtype=jnp.dtype(name))
        variables = jax.jit(model.init)(jax.random.PRNGKey(0), feat, h, cond)

        def loss_fn(params, batch_stats, feat, h, cond, segment):
            logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, feat, h, cond,
                                      train=True, mutable=["batch_stats"])
            return models.segmentation_loss(logits, segment), upd

        # Data passed as arguments (closed-over kernel maps would be constant-folded by XLA).
        fwd = jax.jit(loss_fn)
        fwd_bwd = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        data = (variables["params"], variables["batch_stats"], feat, h, cond, segment)
        t_fwd = median_time(fwd, *data, runs=args.runs)
        t_step = median_time(fwd_bwd, *data, runs=args.runs)
        print(f"{name:>8}: fwd {t_fwd:.3f} s   fwd+bwd {t_step:.3f} s   "
              f"build share of a step {t_build / (t_build + t_step):.1%}   "
              f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
