"""The main command: train, evaluate, test or export a PPT model.

    python -m ppt_jax.main --config=configs/joint.py [--config.train.steps=1000 ...]
        [--workdir=runs/joint] [--mode=train|eval|test|export] [--checkpoint=best|latest|export]

train   trains (resuming from the work directory's latest checkpoint), evaluates every dataset and
        prints the per-dataset table (also in <workdir>/results.txt).
eval    single-pass full-resolution validation of a checkpoint (the reference's training-time val).
test    the reference's test: 13 views x all grid-sampling fragments, softmax voting.
export  writes the checkpoint's model variables + config JSON to <workdir>/export (config.export.part).

--checkpoint=export evaluates (eval/test) the export at config.init.export_dir, with its model settings,
e.g. an imported Pointcept checkpoint (python -m ppt_jax.models.pointcept_import).

Start-up, once through: `parse_flags` (config_flags loads the config file and applies the
`--config.*` overrides: they always win) -> `embedded_data` (the synthetic variant's data dirs) ->
`validate.problems` (every setting checked before any work) -> logging, `distributed.maybe_initialize`,
the persistent compilation cache -> `generate_synthetic` on first use (the entry point is the one
module that imports `data_prep`) -> `loop.train` or `evaluate.evaluate` / `evaluate.export`.
"""

import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ppt_jax import compilation_cache, distributed, host_memory

MODES = ("train", "eval", "test", "export")

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/joint.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (default: runs/<config name>).")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_enum("checkpoint", "best", ("best", "latest", "export"),
                  "Checkpoint for eval/test/export; 'export' = config.init.export_dir.")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: "
                  "$PPT_DISTRIBUTED).")
flags.DEFINE_string("compilation_cache", compilation_cache.default_dir(),
                    "JAX persistent compilation cache directory ('' = off; "
                    "$JAX_COMPILATION_CACHE_DIR wins).")
FLAGS = flags.FLAGS


log = logging.getLogger("ppt_jax.main")


def _setup_logging():
    """Our progress lines on stdout; library chatter (absl users such as Orbax) only from WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("ppt_jax")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _fail(lines):
    """A bad setting or input: `error: ...` lines on stderr, exit code 2, no traceback."""
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)


def _one_line(err):
    """config_flags' messages are reprs of reprs: undo the escaping, join the lines."""
    return " ".join(str(err).replace("\\n", " ").replace("\\'", "'").split())


def parse_flags(argv):
    """absl flag parsing; a bad `--config.*` override (config_flags raises KeyError/AttributeError
    chains for an unknown key) is one line naming it instead of three chained tracebacks."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        _fail([_one_line(err)])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        text = _one_line(err.args[0] if err.args else err)
        key = (re.findall(r"'(\w+)'", text) or [""])[0]
        hint = " ".join(re.findall(r'Did you mean "\w+" instead of "\w+"\?', text)[:1])
        named = [a.split("=")[0] for a in argv if a.startswith("--config.") and f".{key}" in a]
        if not key:
            _fail([f"bad --config override: {text}"])
        _fail([f"{named[0] if named else 'a --config override'}: no setting {key!r}. {hint}"])


def user_error_lines(err):
    """The message lines of an error caused by a setting or an input (None for anything else: a bug
    keeps its traceback). Errors raised inside tf.data carry ours after the op's name."""
    import tensorflow as tf

    from ppt_jax.train import checkpoint, lock, loop, validate

    if isinstance(err, tf.errors.OpError):
        ours = [ln.split(": ", 1)[1] for ln in err.message.splitlines()
                if ln.startswith(("ValueError: ", "FileNotFoundError: "))]
        return ours[-1:] or [err.message.splitlines()[0]]
    if isinstance(err, (validate.ConfigError, checkpoint.CheckpointError, lock.WorkdirBusy,
                        loop.NonFiniteError, FileNotFoundError, ValueError)):
        return str(err).splitlines()
    return None

def embedded_data(config, workdir):
    """(config, directory to generate or None). The synthetic variant (`config.synthetic.enabled`):
    every data directory left "" becomes `<workdir>/synthetic/<Dataset>/<split>`, to be generated
    there; directories given in the config or on the command line are used as given."""
    if not config.synthetic.enabled:
        return config, None
    config = config.copy_and_resolve_references()
    out = os.path.join(workdir, "synthetic")
    empty = []
    for dirs, names, split in ((config.data.train_dirs, config.data.datasets, "train"),
                               (config.eval.val_dirs, config.eval.datasets, "val")):
        for name in names:
            if not dirs[name]:
                dirs[name] = os.path.join(out, name, split)
                empty.append(f"{name}/{split}")
    if empty and "://" in str(workdir):
        raise ValueError(f"--workdir {workdir}: the embedded synthetic default is written with the "
                         f"local file system (data_prep); use a local --workdir, or shards from "
                         f"data_prep in config.data.train_dirs / config.eval.val_dirs (unset: "
                         f"{', '.join(empty)})")
    return config, (out if empty else None)


def generate_synthetic(config, out):
    """The synthetic rooms of `config.synthetic` into `out` (process 0; the others wait for it)."""
    from data_prep import synthetic  # the embedded default only

    s = config.synthetic
    log.warning("Synthetic data (%s): running the recipe on synthetic multi-domain rooms in %s",
                s.reason, out)
    distributed.process_zero_first(
        lambda: synthetic.generate(out, scenes=tuple(s.scenes), val_scenes=tuple(s.val_scenes),
                                   seed=s.seed, density=s.density, workers=s.workers,
                                   progress=False),
        "ppt_jax_synthetic_data")


def main(argv):
    host_memory.keep_freed_memory()         # before JAX starts its thread pools
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/joint.py")
    from ppt_jax.train import validate   # imports JAX but does not start its backend

    workdir = FLAGS.workdir or os.path.join("runs", FLAGS.config.name)
    try:
        config, synthetic_dir = embedded_data(FLAGS.config, workdir)
    except ValueError as err:
        _fail([str(err)])
    problems = validate.problems(config)
    if problems:
        _fail(problems)
    _setup_logging()
    try:
        _run(config, workdir, synthetic_dir)
    except Exception as err:  # noqa: BLE001 -- re-raised unless it is a user error
        lines = user_error_lines(err)
        if lines is None:
            raise
        _fail(lines)


def _run(config, workdir, synthetic_dir):
    info = distributed.maybe_initialize(FLAGS.distributed)
    cache_dir = compilation_cache.enable(FLAGS.compilation_cache)
    compiles = compilation_cache.Counter()
    log.info("config %s, workdir %s, mode %s, process %d/%d, %d devices, compilation cache %s",
             config.name, workdir, FLAGS.mode, info.process_index, info.process_count,
             info.global_devices, cache_dir or "off")
    if synthetic_dir and FLAGS.mode == "train":
        generate_synthetic(config, synthetic_dir)
    from ppt_jax.train import evaluate, loop   # after distributed start-up: they touch the backend

    if FLAGS.mode == "train":
        loop.train(config, workdir)
    elif FLAGS.mode in ("eval", "test"):
        evaluate.evaluate(config, workdir, FLAGS.checkpoint, test=FLAGS.mode == "test")
    else:
        evaluate.export(config, workdir, FLAGS.checkpoint)
    log.info("%s", compiles.summary())


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
