"""Multi-process start-up: `jax.distributed.initialize()` behind one switch.

One process runs per host (TPU VM worker, SLURM task) or per GPU; all of them run the same
`python -m ppt_jax.main --config=...`. Before any other JAX call, the entry point calls
`maybe_initialize(flag)`; it connects the processes when the `--distributed` flag or the environment
variable `PPT_DISTRIBUTED=1` asks for it, and does nothing otherwise (a plain single-process run).

Where the processes find each other:
- `PPT_COORDINATOR_ADDRESS` (host:port of process 0), `PPT_NUM_PROCESSES`, `PPT_PROCESS_ID`: explicit,
  as `launch/local.sh` sets them for N processes on 127.0.0.1 and `launch/slurm.sbatch` may;
- otherwise JAX's own cluster detection fills whatever is unset: Cloud TPU pods (TPU VM metadata),
  SLURM (`SLURM_*` of an `srun` task: one process per task, the first node is the coordinator),
  Open MPI, Kubernetes.

After start-up every process sees all devices (`jax.devices()`) and its own (`jax.local_devices()`);
process p of P reads rows [p * B/P, (p + 1) * B/P) of every global batch of `config.data.batch_size`
= B rows (the rows its devices own) and the trainer assembles the global batch with
`jax.make_array_from_process_local_data`, so P processes train exactly what one process does.
Orbax writes each checkpoint once: every process calls save (they must, it is a collective), process 0
writes the metadata and each process writes only the array shards it owns, so the checkpoint
directory must be shared storage (GCS bucket on TPU pods, a network filesystem on SLURM). A SIGTERM
to any process stops all of them at one agreed step, with a checkpoint (`train.checkpoint.Preemption`).
"""

import dataclasses
import os

import jax

ENV_SWITCH = "PPT_DISTRIBUTED"
ENV_ADDRESS = "PPT_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "PPT_NUM_PROCESSES"
ENV_PROCESS_ID = "PPT_PROCESS_ID"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_devices: int
    global_devices: int


def requested(flag=None, environ=None):
    """Whether distributed start-up is asked for: the flag wins when given, else `PPT_DISTRIBUTED`."""
    if flag is not None:
        return bool(flag)
    value = (environ if environ is not None else os.environ).get(ENV_SWITCH, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {ENV_SWITCH}={value!r}: expected one of {_TRUE + _FALSE[1:]}")


def _int_env(environ, name, minimum):
    raw = environ.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def explicit_settings(environ=None):
    """(coordinator_address, num_processes, process_id) from `PPT_*`; None where unset (auto-detect)."""
    environ = environ if environ is not None else os.environ
    address = environ.get(ENV_ADDRESS) or None
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"environment variable {ENV_ADDRESS}={address!r} must be host:port")
    count = _int_env(environ, ENV_NUM_PROCESSES, 1)
    index = _int_env(environ, ENV_PROCESS_ID, 0)
    if count is not None and index is not None and index >= count:
        raise ValueError(f"{ENV_PROCESS_ID}={index} must be < {ENV_NUM_PROCESSES}={count}")
    return address, count, index


def info():
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(),
                       jax.device_count())


def wait_for_all(name, timeout_s=4 * 3600):
    """Barrier of all processes at the coordination service (no-op for one process).

    Not a device collective: CPU (gloo) collectives give up after 30 s while a peer is busy, e.g.
    process 0 writing the synthetic shards that the others then read.
    """
    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost
    multihost.get_jax_distributed_client().wait_at_barrier(name, int(timeout_s * 1000))


def process_zero_first(fn, name):
    """`fn()` on process 0, then on the others, which find what it wrote (generated shards, a text
    table cache) instead of writing the same files at the same time; `name` names the barrier."""
    if jax.process_index() == 0:
        out = fn()
    wait_for_all(name)
    if jax.process_index() != 0:
        out = fn()
    return out


def maybe_initialize(flag=None, environ=None):
    """Connect the processes if asked for (see module doc); returns this process's `ProcessInfo`.

    Must run before anything touches a JAX backend (the first `jax.devices()` fixes a single process).
    """
    if requested(flag, environ):
        address, count, index = explicit_settings(environ)
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
    return info()
