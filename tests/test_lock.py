"""One training per work directory: a second run fails at once naming the holder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from etils import epath

from ppt_jax.train import lock

HOLD = """
import sys, time
from ppt_jax.train import lock
with lock.WorkdirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_fails_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.WorkdirBusy, match=rf"{tmp_path} is in use by another training run: "
                                                   rf"process {holder.pid} on host"):
            lock.WorkdirLock(tmp_path).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock.WorkdirLock(tmp_path):          # the kernel dropped the dead holder's lock
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()


def test_object_storage_lease_blocks_then_goes_stale(ram_dir):
    with lock.WorkdirLock(ram_dir, heartbeat_s=0.05):
        held = json.loads((epath.Path(ram_dir) / "lock").read_text())
        assert held["pid"] == os.getpid()
        time.sleep(0.2)
        assert json.loads((epath.Path(ram_dir) / "lock").read_text())["heartbeat"] > held["heartbeat"]
        with pytest.raises(lock.WorkdirBusy, match=rf"process {os.getpid()} on host .* renewed"):
            lock.WorkdirLock(ram_dir).__enter__()
    assert not (epath.Path(ram_dir) / "lock").exists()       # released
    stale = {"pid": 1, "host": "gone", "started": "earlier", "heartbeat": time.time() - 1000}
    (epath.Path(ram_dir) / "lock").write_text(json.dumps(stale))
    with lock.WorkdirLock(ram_dir):                        # a preempted holder's lease is taken over
        assert json.loads((epath.Path(ram_dir) / "lock").read_text())["pid"] == os.getpid()
