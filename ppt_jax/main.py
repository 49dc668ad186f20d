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
"""

import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ppt_jax import distributed

MODES = ("train", "eval", "test", "export")

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/joint.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (default: runs/<config name>).")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_enum("checkpoint", "best", ("best", "latest", "export"),
                  "Checkpoint for eval/test/export; 'export' = config.init.export_dir.")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: "
                  "$PPT_DISTRIBUTED).")
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/joint.py")
    from ppt_jax.train import validate   # imports JAX but does not start its backend

    problems = validate.problems(FLAGS.config)
    if problems:
        _fail(problems)
    _setup_logging()
    try:
        _run()
    except Exception as err:  # noqa: BLE001 -- re-raised unless it is a user error
        lines = user_error_lines(err)
        if lines is None:
            raise
        _fail(lines)


def _run():
    info = distributed.maybe_initialize(FLAGS.distributed)
    from ppt_jax.train import loop   # after distributed start-up: it touches the JAX backend

    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", config.name)
    log.info("config %s, workdir %s, mode %s, process %d/%d, %d devices", config.name, workdir,
                 FLAGS.mode, info.process_index, info.process_count, info.global_devices)
    if FLAGS.mode == "train":
        loop.train(config, workdir)
    elif FLAGS.mode in ("eval", "test"):
        loop.evaluate(config, workdir, FLAGS.checkpoint, test=FLAGS.mode == "test")
    else:
        loop.export(config, workdir, FLAGS.checkpoint)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
