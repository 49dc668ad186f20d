"""Where a jitted step's time goes: XLA:CPU's own per-thunk trace, grouped by U-Net level and by kind.

`profile(compiled, args, runs)` runs the compiled step under `jax.profiler` and reads the Perfetto trace:
XLA:CPU records one event per executed thunk (every HLO instruction, also each trip through a while
loop's body), named after the instruction. The optimized HLO text names each instruction's opcode, what
a fusion contains, and the source scope in its metadata (`op_name`: flax names every module call, so the
path says which layer an op belongs to, forward or backward). Only leaf events count (a while loop's
event spans its body's events); with two cores two thunks may overlap, so the table's times are thunk
seconds (close to CPU seconds of the step), and each share is of their sum.
"""

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_LEVEL = (("conv_input", 0), ("down_", 1), ("enc_", 1), ("up_", 0), ("dec_", 0))
_CONTAINERS = {"while", "conditional", "call"}


def parse_hlo(text):
    """name -> (opcode, op_name, opcodes inside a fusion's called computation)."""
    comps, current, instrs = {}, None, {}
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(1)
            comps[current] = set()
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode, rest = m.group(1), m.group(3), m.group(4)
        if current is not None:
            comps[current].add(opcode)
        meta = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        instrs[name] = (opcode, meta.group(1) if meta else "", calls.group(1) if calls else None)
    return {n: (op, meta, comps.get(c, set()) if c else set()) for n, (op, meta, c) in instrs.items()}


def level_of(op_name):
    """U-Net level of a scope path (`.../backbone/dec_0/block1/conv2/...`), else None."""
    for part in op_name.split("/"):
        for prefix, shift in _LEVEL:
            if part.startswith(prefix) and (prefix == "conv_input" or part[len(prefix):].isdigit()):
                return 0 if prefix == "conv_input" else int(part[len(prefix):]) + shift
    return None


def kind_of(opcode, op_name, inner, name):
    """A coarse kind: hierarchy, optimizer, loss/head, norm, conv gather/matmul/scatter, concat/cast..."""
    parts = op_name.split("/")
    if "hierarchy" in parts:
        return "hierarchy (kernel maps)"
    if "optimizer" in parts:
        return "optimizer update"
    if any(p.startswith("seg_head") for p in parts) or "loss" in parts:
        return "head + loss"
    ops = inner | {opcode}
    if any(re.fullmatch(r"(bn\d?|proj_norm|norm)", p) for p in parts):
        return "norm (moments, scale/shift)"
    if any(re.fullmatch(r"(conv\d?|proj_conv)", p) for p in parts) or "dot" in ops or "ynn" in name:
        if "scatter" in ops:
            return "conv scatter-add"
        if "gather" in ops:
            return "conv gather"
        if "dot" in ops or "ynn" in name or opcode in ("custom-call",):
            return "conv matmul"
        return "conv other (pads, slices, masks)"
    if ops & {"concatenate", "convert", "copy", "transpose", "bitcast", "slice", "dynamic-slice"}:
        return "concat / cast / copy"
    return "other elementwise"


LAST_WARMUP = [0.0]


def trace_events(fn, args, runs):
    """Leaf thunk events (name, seconds) of `runs` calls of fn(*args) (already compiled)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    LAST_WARMUP[0] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(runs):
                jax.block_until_ready(fn(*args))
        path = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
        with gzip.open(path) as f:
            data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [(e["name"], e["dur"] * 1e-6, e.get("tid")) for e in events
            if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op")]


def profile(fn, args, hlo_text, runs=1, top=0):
    """{(level or None, kind): seconds per call}, total thunk seconds per call; with `top`, also print
    the `top` instructions that took longest (name, opcode, scope)."""
    info = parse_hlo(hlo_text)
    table, ops = collections.defaultdict(float), collections.defaultdict(float)
    for name, sec, _ in trace_events(fn, args, runs):
        opcode, op_name, inner = info.get(name, ("?", "", set()))
        if opcode in _CONTAINERS:
            continue
        table[(level_of(op_name), kind_of(opcode, op_name, inner, name))] += sec / runs
        ops[name] += sec / runs
    for name, sec in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
        opcode, op_name, inner = info.get(name, ("?", "", set()))
        print(f"  {sec:7.3f} s  {name:<28} {opcode:<12} {','.join(sorted(inner))[:40]:<40} {op_name[-90:]}")
    return dict(table), sum(table.values())


def print_profile(table, total, wall, flops=None):
    """Two tables: by kind (all levels), and by level (all kinds)."""
    by_kind, by_level = collections.defaultdict(float), collections.defaultdict(float)
    for (level, kind), sec in table.items():
        by_kind[kind] += sec
        by_level["-" if level is None else f"level {level}"] += sec
    print(f"  thunk seconds per step {total:.2f} (wall {wall:.2f} s)"
          + (f"; XLA cost analysis {flops / 1e9:.0f} GFLOP" if flops else ""))
    print(f"  {'kind':<34} {'s':>7} {'share':>6}")
    for kind, sec in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<34} {sec:7.2f} {sec / total:6.1%}")
    print(f"  {'level':<34} {'s':>7} {'share':>6}")
    for level, sec in sorted(by_level.items()):
        print(f"  {level:<34} {sec:7.2f} {sec / total:6.1%}")
