"""Keep the memory XLA:CPU frees between steps mapped, so that no step pays to fault it in again.

XLA:CPU allocates every execution's temp buffer (1.07 GiB for the SpUNet step on a 100k-site crop)
with malloc on one of its worker threads. glibc serves a request that large with a fresh `mmap` (a
thread arena cannot hold it) and unmaps it on `free`, so each step faults the whole buffer in again:
281k page faults and 1.6-1.9 CPU seconds of kernel time per step on the project's 2-core machine
(benchmarks/README.md). With one arena, no `mmap` and no trimming, the buffer comes from the main heap
and stays mapped for the next step: no faults, and that step ~10 % faster in turns. The process keeps
its peak heap until it exits, which a training or prediction process does anyway.

`keep_freed_memory()` must run before JAX starts its backend (its thread pools): an existing thread
keeps its arena. It does nothing outside glibc (macOS, musl), where the allocator is another.
"""

import ctypes
import platform

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory():
    """Apply `SETTINGS` with glibc's mallopt; True when all took effect, False off glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
