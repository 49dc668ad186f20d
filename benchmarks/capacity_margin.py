"""How much capacity margin the trainer's level sizing needs: the sites and pairs per level of many augmented
training crops against the largest of the first `config.sparse.sizing_crops` (what the trainer measures).

    python -m benchmarks.capacity_margin --config=configs/joint.py                 # the embedded default
    python -m benchmarks.capacity_margin --config=configs/joint.py --crops=512 --workdir=/tmp/margin
    python -m benchmarks.capacity_margin --config=configs/joint.py:reference   # real shards in its data dirs

The trainer sizes every level's sites as the largest measured crop x `config.sparse.capacity_margin`
(pairs: x `config.sparse.pair_margin`); a later crop with more sites at a coarse level is cropped to the
capacities by the pipeline (`ppt_jax.data.pipeline.fit_levels`, counted in `cropped_sites`), one with more
pairs is an error (`config.sparse.on_overflow`); a larger margin pads every step. Printed per level: the
largest need of the first crops, the largest of all `--crops`, their ratio (the margin the data needed),
the 99th percentile over all, the capacity the trainer's sizing gives from the first crops
(`train.setup.hierarchy_spec`), its padding against the largest need of the first crops (what the trainer
logs) and of all (0 when some crops are over it), and the share of crops over it. Then, per pair level, the
padding of the products the pair convs compute (`sparse.pairs.products`: chunk rounding, the cost the
capacity's slack does not have), over all the crops.
"""

import os
import sys

import numpy as np
from absl import app, flags

from ppt_jax import main as entry   # its flags: --config (with --config.* overrides), --workdir
from ppt_jax.sparse import pairs, sizing
from ppt_jax.train import setup

_CROPS = flags.DEFINE_integer("crops", 256, "augmented training crops to measure")


def margin_table(stats, first, spec):
    """Rows per level and kind (sites, pairs): need of the first `first` crops, of all, their ratio, the 99th
    percentile, the capacity `spec` gives (sized from the first crops) and its padding against the largest need."""
    caps = {"sites": spec.capacities, "pairs": spec.pair_capacities}
    rows = []
    for kind in ("sites", "pairs"):
        a = np.asarray(stats[kind], np.float64)
        for level in range(a.shape[1]):
            head, top, cap = a[:first, level].max(), a[:, level].max(), caps[kind][level]
            if top == 0 or cap == 0:
                continue
            rows.append({"kind": kind, "level": level, "first": int(head), "all": int(top),
                         "needed_margin": top / max(head, 1), "p99": float(np.percentile(a[:, level], 99)),
                         "capacity": int(cap), "padding_first": 1 - head / cap,
                         "padding": max(1 - top / cap, 0.0), "over": float(np.mean(a[:, level] > cap))})
    return rows


def main(argv):
    del argv
    config, out = entry.embedded_data(entry.FLAGS.config, entry.FLAGS.workdir or "/tmp/ppt_jax_margin")
    if out and not os.path.exists(os.path.join(out, config.data.datasets[0], "train")):
        entry.generate_synthetic(config, out)
    config = config.copy_and_resolve_references()
    first = config.sparse.sizing_crops
    config.sparse.sizing_crops = max(_CROPS.value, first)
    stats = sizing.measure(setup.train_crops(config))
    spec = setup.hierarchy_spec(config, config.data.num_sites, {k: v[:first] for k, v in stats.items()})
    print(f"{len(stats['sites'])} augmented crops of {config.name} (budget {config.data.num_sites} sites); "
          f"the trainer measures the first {first}; margin {config.sparse.capacity_margin}")
    print(f"{'':6}{'level':>6}{'first':>10}{'all':>10}{'needed':>8}{'p99':>10}{'capacity':>10}"
          f"{'padding first / all':>21}{'over':>8}")
    for r in margin_table(stats, first, spec):
        over = "" if not r["over"] else ("  cropped to it" if r["kind"] == "sites" else "  OVERFLOW (error)")
        print(f"{r['kind']:6}{r['level']:>6}{r['first']:>10}{r['all']:>10}{r['needed_margin']:>8.3f}"
              f"{r['p99']:>10.0f}{r['capacity']:>10}{100 * r['padding_first']:>14.1f}% / "
              f"{100 * r['padding']:.1f}%{100 * r['over']:>7.1f}%{over}")
    for level, chunk in enumerate(spec.pair_chunks):
        need = stats["tap_pairs"][:, level]                                    # (crops, 13)
        if spec.pair_capacities[level] and need.sum():
            done = pairs.products(need, chunk).sum(-1)
            print(f"pair products level {level} (chunks of {chunk}, tail {pairs.tail_chunk(chunk)}): padded "
                  f"{100 * (1 - need.sum() / done.sum()):.1f}% over all crops, at most "
                  f"{100 * np.max(1 - need.sum(-1) / np.maximum(done, 1)):.1f}% in one crop")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
