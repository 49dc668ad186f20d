"""Precompute the union-name embedding table: python -m ppt_jax.text --encoder minilm --out DIR.

Run it where the encoder's weights are (e.g. CLIP); copy DIR's text_embeddings/ to the training work
directory, and training loads the table without the encoder.
"""

import argparse
import logging
import sys

import numpy as np

from ppt_jax import labels
from ppt_jax.text import cache, table
from ppt_jax.text.sources import EncoderUnavailable

# Pairs whose similarity should exceed the second (the point of language-guided anchors).
MEANING_CHECKS = (("bookshelf", "bookcase", "toilet"), ("sofa", "chair", "ceiling"))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ppt_jax.text", description=__doc__.split("\n")[0])
    p.add_argument("--encoder", required=True, choices=sorted(table.ENCODERS))
    p.add_argument("--out", required=True, help="cache directory (the training work directory)")
    p.add_argument("--template", default="[x]", help='prompt with "[x]" for the class name')
    p.add_argument("--model-path", default=None, help="local model directory or hub id")
    p.add_argument("--bpe-path", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (clip only)")
    return p.parse_args(argv)


def summary(names, emb):
    """Lines describing the cosine matrix: off-diagonal statistics, nearest neighbours, meaning checks."""
    cos = emb.astype(np.float64) @ emb.T.astype(np.float64)
    off = cos[~np.eye(len(names), dtype=bool)]
    lines = [f"cosine off-diagonal: mean {off.mean():.3f}  min {off.min():.3f}  max {off.max():.3f}"]
    masked = np.where(np.eye(len(names), dtype=bool), -np.inf, cos)
    for i, name in enumerate(names):
        j = int(masked[i].argmax())
        lines.append(f"  {name:>16s} -> {names[j]:<16s} {cos[i, j]:.3f}")
    idx = {n: i for i, n in enumerate(names)}
    for a, near, far in MEANING_CHECKS:
        if {a, near, far} <= idx.keys():
            c_near, c_far = cos[idx[a], idx[near]], cos[idx[a], idx[far]]
            verdict = "ok" if c_near > c_far else "FAILS"
            lines.append(f"cos({a},{near}) {c_near:.3f} > cos({a},{far}) {c_far:.3f}: {verdict}")
    return lines


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = labels.UNION_NAMES
    try:
        emb = table.class_embeddings(args.encoder, names, args.template, cache_dir=args.out,
                                     model_path=args.model_path, bpe_path=args.bpe_path)
    except (EncoderUnavailable, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    spec = table.table_spec(args.encoder, names, args.template, args.model_path)
    print(f"encoder {args.encoder}: {table.ENCODERS[args.encoder].label}; model {spec['model']}; "
          f"template {args.template!r}")
    print(f"table {emb.shape} {emb.dtype} -> {cache.paths(args.out, spec)[0]}")
    print("\n".join(summary(names, emb)))


if __name__ == "__main__":
    main()
