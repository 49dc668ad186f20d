"""Negative transfer and PPT's ablations on the synthetic multi-domain data.

    python benchmarks/ablation.py --budget objects --pilot 150,300,600 --out docs/results/objects
    python benchmarks/ablation.py --budget objects --seeds 0,1,2 --gaps 1,0,2 --out docs/results/objects
        [--runs ppt,naive_joint,...] [--work /tmp/ppt_ablation]
    python benchmarks/ablation.py --budget objects --data_stats
    (budgets: smoke = does it run; objects = 5 cm voxels on connected surfaces, steps to be fixed by
    the pilot; small = 40 and long = 300 steps on sparse 2 cm rooms, the earlier results; medium =
    1500 steps on bigger rooms, for an accelerator)

Every run trains the project's recipe (configs/) for the SAME number of steps on the SAME synthetic
shards (generated once per domain gap, data_prep.synthetic) and is evaluated single-pass on each
domain's val split:
- single_<domain>: configs/<domain>.py, one dataset;
- naive_joint: configs/naive_joint.py (three datasets, no prompts = shared BN, unionized head);
- ppt: configs/joint.py (PDNorm + language-guided head);
- adapter ablation (language-guided head): adapter none / add / cross_attention / pdnorm (= ppt);
- head ablation (PDNorm): head decoupled / unionized / language (= ppt);
- prompt_zero_init: ppt with zero-initialised modulation and 0.1x learning rate on the prompt and
  modulation parameters (the paper's variant).

Order (a run cut short has done the most important part): the baselines (single, naive joint, PPT)
for every seed and domain gap (`--gaps`; data_prep.synthetic's `gap`: 0 = one sensor, only the label
spaces differ, 1 = the documented domains, 2 = doubled differences), seed by seed, then the
ablations at gap 1. Each finished run is written to `<work>/<budget>/runs/<run>-seed<s>-gap<g>.json`
and appended to `<work>/<budget>/results.jsonl` (a rerun skips what is there); after each run the
tables `<out>/ablation.md`, the records `<out>/ablation.json`, the bar plot `<out>/ablation.png` and
the transfer plot `<out>/transfer.png` ((joint - single) mIoU per domain against the gap) are
rewritten from everything recorded so far.

The pilot (`--pilot STEPS,...`) fixes a budget's steps before any joint run: the single-dataset
baselines, seed 0, gap 1, at each step count, with their object-class IoU and a BatchNorm check (the
val mIoU with the running statistics against the mIoU with statistics re-estimated on 16 training
batches of the final weights: equal when the running statistics have converged). It writes
`<out>/pilot.md` and `<out>/pilot.png`. Nothing is tuned toward an expected result: the budget presets
fix steps, data and model size before any run of the rows.
"""

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from ppt_jax import labels  # noqa: E402

DOMAINS = (labels.STRUCTURED3D, labels.SCANNET, labels.S3DIS)
# Classes that are room structure rather than objects (object-class mIoU leaves them out).
STRUCTURE = ("wall", "floor", "ceiling", "beam", "column", "otherstructure")
# name -> (config module, {model overrides}, {optim overrides}).
RUNS = {
    "single_Structured3D": ("structured3d", {}, {}),
    "single_ScanNet": ("scannet", {}, {}),
    "single_S3DIS": ("s3dis", {}, {}),
    "naive_joint": ("naive_joint", {}, {}),
    "ppt": ("joint", {}, {}),
    "adapter_none": ("joint", {"adapter": "none"}, {}),
    "adapter_add": ("joint", {"adapter": "add"}, {}),
    "adapter_cross_attention": ("joint", {"adapter": "cross_attention"}, {}),
    "head_decoupled": ("joint", {"head": "decoupled"}, {}),
    "head_unionized": ("joint", {"head": "unionized"}, {}),
    "prompt_zero_init": ("joint", {"zero_init": True}, {"group_lr_scale": 0.1}),
}
SINGLE = tuple(f"single_{d}" for d in DOMAINS)
BASELINES = (*SINGLE, "naive_joint", "ppt")     # run at every gap
ABLATIONS = tuple(r for r in RUNS if r not in BASELINES)   # gap 1 only
# Rows of the table: (section, label, run name); ppt appears in both ablations (it is both defaults).
TABLE = (
    ("baselines", "single-dataset (one model per domain)", "single"),
    ("baselines", "naive joint (no prompts, unionized head)", "naive_joint"),
    ("baselines", "PPT (PDNorm + language-guided head)", "ppt"),
    ("adapter (language-guided head)", "none", "adapter_none"),
    ("adapter (language-guided head)", "add", "adapter_add"),
    ("adapter (language-guided head)", "cross-attention", "adapter_cross_attention"),
    ("adapter (language-guided head)", "PDNorm", "ppt"),
    ("head (PDNorm)", "decoupled", "head_decoupled"),
    ("head (PDNorm)", "unionized", "head_unionized"),
    ("head (PDNorm)", "language-guided", "ppt"),
    ("prompts", "zero-init modulation, 0.1x prompt lr", "prompt_zero_init"),
)
BUDGETS = {
    # a check that everything runs (minutes): tiny data, tiny model, a few steps
    "smoke": dict(scenes=(8, 4, 2), val_scenes=(2, 2, 2), density=0.02, steps=4,
                  model=base.MODEL_SIZES["tiny"],
                  data={"batch_size": 2, "num_sites": 1024, "eval_num_sites": 8192,
                        "eval_num_points": 16384}),
    # rooms where the finest level sees connected surfaces: 5 cm voxels at 30 % of the real 2 cm site
    # density (docs/results/README.md, "Why no object was learned"); the embedded default's model and
    # batch (2 x 8192 sites since R6, set before the pilot's first run). Its steps are fixed by the
    # pilot before any joint run: until "steps" is written here, only --pilot and --data_stats run.
    "objects": dict(scenes=(32, 16, 8), val_scenes=(8, 8, 8), density=0.3,
                    model=base.MODEL_SIZES["small"],
                    data={"grid_size": 0.05, "batch_size": base.EMBEDDED["data"]["batch_size"],
                          "num_sites": base.EMBEDDED["data"]["num_sites"], "eval_num_sites": 1 << 17,
                          "eval_num_points": 1 << 19},
                    sparse={"sizing_crops": 128}),
    # the earlier experiment on a 2-core CPU: 2 cm grid on rooms at 2 % of the real site density
    "small": dict(scenes=(48, 24, 12), val_scenes=(4, 4, 4), density=0.02, steps=40,
                  model=base.MODEL_SIZES["small"],
                  data={"batch_size": 2, "num_sites": 2048, "eval_num_sites": 8192,
                        "eval_num_points": 16384}),
    # for a bigger machine
    "medium": dict(scenes=(160, 80, 40), val_scenes=(12, 8, 6), density=0.05, steps=1500,
                   model=base.MODEL_SIZES["medium"],
                   data={"batch_size": 8, "num_sites": 16384, "eval_num_sites": 65536,
                         "eval_num_points": 131072}),
}
# `small` trained 7.5x longer: BatchNorm's running statistics (momentum 0.01, as the reference) keep
# 0.99^300 = 5 % of their initial values at evaluation instead of 67 % after 40 steps. Chosen for that
# reason alone, before any run of it.
BUDGETS["long"] = {**BUDGETS["small"], "steps": 300}

log = logging.getLogger("ablation")


def make_config(run, budget, seed, data_dir, text_cache, steps=None):
    """The run's config module, its datasets pointed at the shared shards, scaled by the budget."""
    import importlib

    module, model, optim = RUNS[run]
    config = importlib.import_module(f"configs.{module}").get_config("reference")
    b = BUDGETS[budget]
    config.update({"model": {**b["model"], **model}, "data": dict(b["data"]), "optim": optim,
                   "sparse": b.get("sparse", {})})
    names = tuple(config.data.datasets)
    config.name = run
    config.seed = seed
    config.data.seed = seed
    config.data.num_parallel_calls = 2
    config.data.train_dirs = {n: os.path.join(data_dir, n, "train") for n in names}
    config.eval.val_dirs = {n: os.path.join(data_dir, n, "val") for n in config.eval.datasets}
    config.train.steps = steps or b["steps"]
    config.train.log_every = max(1, config.train.steps // 6)
    config.train.checkpoint_every = config.train.steps
    config.text.encoder = "minilm"          # offline; CLIP weights are not installed here
    config.text.cache_dir = text_cache
    return config


def recorded(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def gap_of(record):
    return record.get("gap", 1.0)     # records of the earlier budgets predate the gap sweep


def data_dir_for(work, budget, gap):
    return os.path.join(work, budget, "data" if gap == 1.0 else f"data-gap{gap:g}")


def generate(work, budget, gap):
    from data_prep import synthetic

    b, out = BUDGETS[budget], data_dir_for(work, budget, gap)
    synthetic.generate(out, scenes=b["scenes"], val_scenes=b["val_scenes"], seed=0, density=b["density"],
                       workers=1, progress=False, gap=gap)
    return out


def val_presence(data_dir, budget):
    """{domain: [class names with val points]}: object-class mIoU averages over these only."""
    path = os.path.join(data_dir, "val_presence.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    from ppt_jax.data import pipeline
    cfg = make_config("ppt", budget, 0, data_dir, "", steps=1).data      # the data settings only
    out = {}
    for d in DOMAINS:
        counts = np.zeros(labels.num_classes(d), np.int64)
        for batch in pipeline.eval_dataset(os.path.join(data_dir, d, "val"), d, cfg):
            seg = batch["origin_segment"]
            counts += np.bincount(seg[seg >= 0], minlength=len(counts))
        out[d] = [n for n, c in zip(labels.CLASS_NAMES[d], counts) if c]
    with open(path, "w") as f:
        json.dump(out, f)
    return out


def object_miou(iou, present):
    """Mean IoU over the object classes (not STRUCTURE) present in the val rooms."""
    objects = [n for n in present if n not in STRUCTURE]
    return float(np.mean([iou[n] for n in objects])) if objects else float("nan")


def summary(results, presence):
    return {"mIoU": {n: float(r["mIoU"]) for n, r in results.items()},
            "object_mIoU": {n: object_miou(r["iou"], presence[n]) for n, r in results.items()},
            "allAcc": {n: float(r["allAcc"]) for n, r in results.items()},
            "iou": {n: r["iou"] for n, r in results.items()}}


def run_one(run, budget, seed, gap, work, steps=None, name=None):
    from ppt_jax.train import loop

    data_dir = data_dir_for(work, budget, gap)
    workdir = os.path.join(work, budget, name or f"{run}-seed{seed}-gap{gap:g}")
    config = make_config(run, budget, seed, data_dir, os.path.join(work, "text"), steps)
    t0, cpu0 = time.time(), time.process_time()
    results = loop.train(config, workdir)
    return {"run": run, "budget": budget, "seed": seed, "gap": gap, "seconds": round(time.time() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "steps": int(config.train.steps), "datasets": list(config.data.datasets),
            **summary(results, val_presence(data_dir, budget))}, config, workdir


def bn_check(config, workdir, batches=16):
    """Val results of the final weights with BatchNorm statistics re-estimated on `batches` training
    batches (mean of the batch statistics: momentum 0 per batch, averaged)."""
    import jax

    from ppt_jax.data import pipeline
    from ppt_jax.train import evaluate, setup
    from ppt_jax.train.step import build_hierarchies

    run, state = evaluate.restore(config, workdir, "latest", splits=("train", "val"))
    stats = setup.level_stats(workdir, "train", None)      # measured by the training run
    spec = setup.hierarchy_spec(run.config, run.config.data.num_sites, stats)
    model = run.model.clone(bn_momentum=0.0)

    @jax.jit
    def batch_stats(variables, b):
        h = build_hierarchies(b["grid_coord"], b["mask"], spec)
        _, upd = model.apply(variables, b["feat"], h, b["condition"], train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
        return upd["batch_stats"]

    variables = evaluate.variables_of(state)
    stream = pipeline.train_dataset(run.config.data, 0, 1, start_step=0, steps=batches,
                                    level_sites=spec.capacities[1:])
    total = None
    for _ in range(batches):
        b = run.device_batch(next(stream), pipeline.TRAIN_KEYS[:-1])
        s = batch_stats(variables, b)
        total = s if total is None else jax.tree_util.tree_map(lambda a, c: a + c, total, s)
    precise = {**variables, "batch_stats": jax.tree_util.tree_map(lambda a: a / batches, total)}
    return evaluate.make_validator(run)(precise)


def run_pilot(budget, steps_list, work, out_dir):
    """The single-dataset baselines (seed 0, gap 1) at each step count, with the BatchNorm check."""
    path = os.path.join(work, budget, "pilot.jsonl")
    data_dir = generate(work, budget, 1.0)
    presence = val_presence(data_dir, budget)
    for steps in steps_list:
        for run in SINGLE:
            if any(r["run"] == run and r["steps"] == steps for r in recorded(path)):
                continue
            log.info("=== pilot %s, %d steps (budget %s)", run, steps, budget)
            record, config, workdir = run_one(run, budget, 0, 1.0, work, steps,
                                              name=f"pilot-{steps}/{run}")
            record["bn_check"] = summary(bn_check(config, workdir), presence)
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("=== pilot %s %d steps: object mIoU %s, with re-estimated BN %s", run, steps,
                     record["object_mIoU"], record["bn_check"]["object_mIoU"])
            write_pilot(recorded(path), out_dir, budget)
    print(pilot_table(recorded(path), budget))


def pilot_table(records, budget):
    lines = [f"Pilot, budget `{budget}`: single-dataset baselines, seed 0, gap 1. Val mIoU / object-class "
             "mIoU (%, object classes present in the val rooms); 'BN re-est.' = the same weights with "
             "BatchNorm statistics re-estimated on 16 training batches.", "",
             "| steps | domain | mIoU | object mIoU | mIoU, BN re-est. | object mIoU, BN re-est. | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["steps"], DOMAINS.index(r["datasets"][0]))):
        d = r["datasets"][0]
        lines.append(f"| {r['steps']} | {d} | {100 * r['mIoU'][d]:.1f} | {100 * r['object_mIoU'][d]:.1f} | "
                     f"{100 * r['bn_check']['mIoU'][d]:.1f} | {100 * r['bn_check']['object_mIoU'][d]:.1f} | "
                     f"{r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def write_pilot(records, out_dir, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "pilot.md"), "w") as f:
        f.write(pilot_table(records, budget))
    with open(os.path.join(out_dir, "pilot.json"), "w") as f:
        json.dump(records, f, indent=1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in DOMAINS:
        rs = sorted((r for r in records if r["datasets"] == [d]), key=lambda r: r["steps"])
        ax.plot([r["steps"] for r in rs], [100 * r["object_mIoU"][d] for r in rs], "o-", label=f"{d}")
        ax.plot([r["steps"] for r in rs], [100 * r["bn_check"]["object_mIoU"][d] for r in rs], "x:",
                color=ax.lines[-1].get_color(), label=f"{d}, BN re-estimated")
    ax.axhline(30, color="grey", lw=0.8)
    ax.set_xlabel("steps (single-dataset run)")
    ax.set_ylabel("val object-class mIoU (%)")
    ax.set_title(f"Pilot, budget '{budget}'")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "pilot.png"), dpi=110)
    plt.close(fig)


def _cell(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


def _of_row(record, run, domain):
    return record["run"] == run or (run == "single" and record["run"] == f"single_{domain}")


def per_domain(records, run, key="mIoU"):
    """{domain: {seed: value}} of a table row ("single" gathers the three single runs)."""
    out = {d: {} for d in DOMAINS}
    for r in records:
        for d in DOMAINS:
            if _of_row(r, run, d) and d in r.get(key, {}):
                out[d][r["seed"]] = r[key][d]
    return out


def table(records, budget, gap, rows=TABLE, key="mIoU", what="val mIoU"):
    records = [r for r in records if gap_of(r) == gap]
    seeds = sorted({r["seed"] for r in records})
    steps = sorted({r["steps"] for r in records})
    lines = [f"Per-domain {what} (%) on the synthetic data, budget `{budget}`, domain gap {gap:g} "
             f"({steps} steps per run; seeds {seeds}; mean ± sample std over seeds where more than one; "
             f"'-' = not run).", "",
             "| section | model | " + " | ".join(DOMAINS) + " | mean |",
             "|---|---|" + "---|" * (len(DOMAINS) + 1)]
    for section, label, run in rows:
        cols = per_domain(records, run, key)
        common = set.intersection(*(set(cols[d]) for d in DOMAINS))   # the row mean per seed, then over seeds
        means = [float(np.mean([cols[d][s] for d in DOMAINS])) for s in sorted(common)]
        lines.append(f"| {section} | {label} | " + " | ".join(_cell(list(cols[d].values())) for d in DOMAINS)
                     + f" | {_cell(means)} |")
    return "\n".join(lines) + "\n"


def report(records, budget):
    gaps = sorted({gap_of(r) for r in records})
    parts = []
    for gap in gaps:
        rows = TABLE if gap == 1.0 else TABLE[:3]
        parts += [table(records, budget, gap, rows), table(records, budget, gap, rows, "object_mIoU",
                                                           "object-class mIoU (classes present in val)")]
    return "\n".join(parts)


def transfer(records, run, key="mIoU"):
    """{domain: {gap: [joint - single per seed]}}, paired by seed."""
    out = {d: {} for d in DOMAINS}
    for gap in sorted({gap_of(r) for r in records}):
        at = [r for r in records if gap_of(r) == gap]
        joint, single = per_domain(at, run, key), per_domain(at, "single", key)
        for d in DOMAINS:
            diffs = [joint[d][s] - single[d][s] for s in sorted(set(joint[d]) & set(single[d]))]
            if diffs:
                out[d][gap] = diffs
    return out


def transfer_plot(records, path, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (run, title) in zip(axes, (("naive_joint", "naive joint"), ("ppt", "PPT"))):
        for i, (d, by_gap) in enumerate(transfer(records, run).items()):
            gaps = sorted(by_gap)
            mean = [100 * np.mean(by_gap[g]) for g in gaps]
            err = [100 * np.std(by_gap[g], ddof=1) if len(by_gap[g]) > 1 else 0 for g in gaps]
            ax.errorbar(np.array(gaps) + 0.03 * (i - 1), mean, yerr=err, marker="o", capsize=3, label=d)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("domain gap (0 = one sensor, 1 = documented, 2 = doubled)")
        ax.set_title(f"{title} - single-dataset")
    axes[0].set_ylabel("val mIoU difference (points)")
    axes[0].legend()
    fig.suptitle(f"Budget '{budget}': joint minus single-dataset mIoU per domain (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_plot(records, path, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if gap_of(r) == 1.0]
    rows = [(label if section == "baselines" else f"{section.split(' ')[0]}: {label}", run)
            for section, label, run in TABLE if not (run == "ppt" and section != "baselines")]
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(DOMAINS)
    x = np.arange(len(rows))
    for i, d in enumerate(DOMAINS):
        vals = [list(per_domain(records, run)[d].values()) for _, run in rows]
        mean = [100 * np.mean(v) if v else np.nan for v in vals]
        err = [100 * np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals]
        ax.bar(x + (i - 1) * width, mean, width, yerr=err, label=d, capsize=2)
    ax.set_xticks(x, [label for label, _ in rows], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"Synthetic multi-domain data, budget '{budget}', gap 1: per-domain mIoU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records, out_dir, budget):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(report(records, budget))
    with open(os.path.join(out_dir, "ablation.json"), "w") as f:
        json.dump(records, f, indent=1)
    bar_plot(records, os.path.join(out_dir, "ablation.png"), budget)
    if len({gap_of(r) for r in records}) > 1:
        transfer_plot(records, os.path.join(out_dir, "transfer.png"), budget)


def plan(runs, seeds, gaps):
    """(run, seed, gap) in priority order: baselines at every gap seed by seed, then the ablations."""
    first = [(r, s, g) for s in seeds for g in gaps for r in BASELINES if r in runs]
    return first + [(r, s, 1.0) for s in seeds for r in ABLATIONS if r in runs and 1.0 in gaps]


def data_stats(density, grid, scenes=6, gap=1.0):
    """What the network sees of a budget's rooms at its grid, per domain: sites per room, occupied
    3x3x3 neighbours per site (8 on a fully sampled plane, ~0 = isolated points) and the share of
    each class among the sites. Returns printable lines."""
    from data_prep import synthetic
    from ppt_jax.sparse import sizing

    lines = []
    for d in DOMAINS:
        names = ("unlabelled", *labels.CLASS_NAMES[d])
        counts, sites, pairs = np.zeros(len(names)), [], []
        for i in range(scenes):
            raw = synthetic.make_scene(d, f"train_{i:05d}", seed=0, density=density, gap=gap)
            cells, first = np.unique(np.floor(raw["coord"] / grid).astype(np.int64), axis=0, return_index=True)
            counts += np.bincount(raw["segment"][first] + 1, minlength=len(names))
            stats = sizing.measure([cells], levels=1)
            sites.append(len(cells))
            pairs.append(stats["pairs"][0, 0] / len(cells))
        share = counts / counts.sum()
        lines.append(f"{d}: density {density}, grid {grid} m: {np.mean(sites):.0f} sites per room, "
                     f"{np.mean(pairs):.2f} neighbours per site; classes (% of sites): "
                     + ", ".join(f"{names[j]} {100 * share[j]:.1f}" for j in np.argsort(-share) if share[j]))
    return lines


def _numbers(text, kind):
    return [kind(x) for x in text.split(",") if x]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="objects")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--gaps", default="1", help="comma-separated domain gaps (data_prep.synthetic)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"subset of {list(RUNS)}")
    p.add_argument("--pilot", default="", help="comma-separated step counts: run the pilot instead")
    p.add_argument("--data_stats", action="store_true",
                   help="print sites, neighbours and class shares of the budget's rooms, then exit")
    p.add_argument("--work", default="/tmp/ppt_ablation", help="data, run dirs, results.jsonl")
    p.add_argument("--out", default="docs/results/objects", help="where the tables and plots go")
    args = p.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        p.error(f"--runs: unknown {unknown}; known: {list(RUNS)}")
    seeds, gaps = _numbers(args.seeds, int), _numbers(args.gaps, float)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ppt_jax import compilation_cache
    compilation_cache.enable(compilation_cache.default_dir())   # one compile per model variant and shape

    if args.data_stats:
        b = BUDGETS[args.budget]
        print("\n".join(data_stats(b["density"], b["data"].get("grid_size", base.recipe("x").data.grid_size))))
        return None
    if args.pilot:
        return run_pilot(args.budget, _numbers(args.pilot, int), args.work, args.out)
    if "steps" not in BUDGETS[args.budget]:
        p.error(f"--budget {args.budget} has no fixed number of steps yet: run the pilot (--pilot STEPS,...) "
                f"and write the steps it chooses into BUDGETS[{args.budget!r}] before any joint run")
    results_path = os.path.join(args.work, args.budget, "results.jsonl")
    run_dir = os.path.join(args.work, args.budget, "runs")
    os.makedirs(run_dir, exist_ok=True)
    for run, seed, gap in plan(runs, seeds, gaps):
        if any(r["run"] == run and r["seed"] == seed and gap_of(r) == gap for r in recorded(results_path)):
            continue
        generate(args.work, args.budget, gap)
        log.info("=== %s seed %d gap %g (budget %s)", run, seed, gap, args.budget)
        record = run_one(run, args.budget, seed, gap, args.work)[0]
        with open(os.path.join(run_dir, f"{run}-seed{seed}-gap{gap:g}.json"), "w") as f:
            json.dump(record, f, indent=1)
        with open(results_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("=== %s seed %d gap %g: %s in %.0f s", run, seed, gap, record["mIoU"], record["seconds"])
        write_report(recorded(results_path), args.out, args.budget)
    print(report(recorded(results_path), args.budget))


if __name__ == "__main__":
    main()
