"""host_memory.keep_freed_memory: a large block freed on a worker thread stays mapped for the next one.

That is XLA:CPU's pattern (each execution mallocs its temp buffer on a worker thread and frees it);
the effect on the SpUNet step (281k -> 0 page faults per step) is measured in benchmarks/README.md."""

import json
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, json, resource, sys, threading
from ppt_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "on" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, faults = 256 << 20, []

def steps():
    for _ in range(3):
        block = libc.malloc(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(block, 1, size)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(block)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt only")
def test_a_freed_block_stays_mapped_for_the_next_step():
    pages = (256 << 20) // 4096
    off, on = _faults("off"), _faults("on")
    assert off["applied"] is None and on["applied"] is True
    assert all(f >= pages * 0.9 for f in off["faults"]), off       # mmap'd afresh and unmapped each time
    assert on["faults"][0] >= pages * 0.9, on                     # the first touch faults in
    assert max(on["faults"][1:]) < pages * 0.01, on               # later steps reuse it
