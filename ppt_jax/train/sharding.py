"""Device mesh and shardings: batches split over the `data` axis, the train state replicated.

The mesh is one axis, `data`, over all devices in `jax.devices()` order (data parallelism: every
device holds the whole model, at 1-40 M parameters a few hundred MB at most). Process p of P owns the
contiguous rows [p * B/P, (p + 1) * B/P) of a global batch of B rows, the rows its input pipeline
reads (`ppt_jax.data.pipeline`); `check_host_rows` proves it for a mesh, `global_batch` assembles
the global array from every process's rows, and `prefetch_to_device` keeps the next batches'
host-to-device copies in flight while a step runs.
"""

import collections
import itertools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None):
    """A one-axis (`data`) mesh over `devices` (default: all devices, process by process)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh):
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh):
    return NamedSharding(mesh, P())


def check_host_rows(mesh, global_rows, field):
    """Raise unless a global batch of `global_rows` splits evenly over the data axis and this
    process's devices own the contiguous block of rows [p * rows / P, (p + 1) * rows / P), the rows
    the input pipeline reads on host p."""
    data_devices = mesh.shape[DATA_AXIS]
    if global_rows % data_devices:
        raise ValueError(f"{field}: {global_rows} global rows do not split over the "
                         f"{data_devices} devices of the mesh's data axis")
    owned = batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
    rows = sorted({r for (index,) in owned for r in range(*index.indices(global_rows))})
    local = global_rows // jax.process_count()
    expected = list(range(jax.process_index() * local, (jax.process_index() + 1) * local))
    if rows != expected:
        raise ValueError(f"{field}: process {jax.process_index()} owns rows {rows} of the global "
                         f"batch, the pipeline gives it {expected}: order the mesh's devices by "
                         f"process (jax.devices() order)")


def global_batch(batch, mesh):
    """Per-host numpy batch -> global jax arrays sharded over the data axis (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def prefetch_to_device(batches, put, size=2):
    """Yield `put(batch)` for each of `batches`, `size` batches ahead of the consumer.

    `put` starts the (asynchronous) transfer to the devices, e.g. `global_batch`; the next batches
    are then already on their way while the current step runs (flax's `prefetch_to_device`, for
    global arrays on a mesh instead of pmap's per-device shards).
    """
    queue = collections.deque()

    def enqueue(n):
        for batch in itertools.islice(batches, n):
            queue.append(put(batch))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
