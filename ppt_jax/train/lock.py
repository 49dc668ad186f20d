"""One training at a time per work directory.

Two runs in one work directory interleave `metrics.jsonl` and race each other's checkpoint saves.
`WorkdirLock` makes the second one fail at once, naming the holder:

- a local directory: an exclusive `fcntl.flock` on `<workdir>/lock`; the kernel releases it when the
  holder exits in any way (SIGKILL included), so a killed run never leaves a stale lock;
- object storage (gs://..., no advisory locks): a lease, `<workdir>/lock` holding the holder's host,
  PID and a heartbeat time that a thread refreshes every `HEARTBEAT_S`; a lease older than `STALE_S`
  belongs to a run that is gone (preempted) and is taken over.

Process 0 of a multi-process run takes it for the run.
"""

import fcntl
import json
import os
import socket
import threading
import time

from etils import epath

LOCK_NAME = "lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0


class WorkdirBusy(RuntimeError):
    """Another run holds the work directory."""


def _holder_text(info, workdir):
    if not info:
        return f"{workdir} is in use by another training run"
    return (f"{workdir} is in use by another training run: process {info.get('pid')} on host "
            f"{info.get('host')} (started {info.get('started')})")


def _me():
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def is_local(path):
    return "://" not in str(path)


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the work directory for one run (or raises WorkdirBusy)."""

    def __init__(self, workdir, heartbeat_s=HEARTBEAT_S, stale_s=STALE_S):
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self._fd = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        if is_local(self.workdir):
            self._flock()
        else:
            self._lease()
        return self

    def __exit__(self, *exc):
        self.release()

    def _flock(self):
        fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            os.close(fd)
            raise WorkdirBusy(_holder_text(info, self.workdir)
                              + ": wait for it to finish or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self._fd = fd

    def _read_lease(self):
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _lease(self):
        held = self._read_lease()
        if held and time.time() - held.get("heartbeat", 0) < self.stale_s:
            raise WorkdirBusy(_holder_text(held, self.workdir) + f"; its lease was renewed "
                              f"{time.time() - held['heartbeat']:.0f} s ago (taken over after "
                              f"{self.stale_s:.0f} s without renewal): wait or use another --workdir")
        self._me = dict(_me(), token=os.urandom(8).hex())
        self._renew()
        if (self._read_lease() or {}).get("token") != self._me["token"]:
            raise WorkdirBusy(_holder_text(self._read_lease(), self.workdir)
                              + ": it started at the same moment; use another --workdir")
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lease")
        self._thread.start()

    def _renew(self):
        tmp = self.path.with_name(f"{LOCK_NAME}.{self._me['token']}")
        tmp.write_text(json.dumps(dict(self._me, heartbeat=time.time())))
        tmp.replace(self.path)            # readers never see a half-written lease

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            self._renew()

    def release(self):
        if self._fd is not None:
            os.close(self._fd)            # releases the flock; the file stays (harmless)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if (self._read_lease() or {}).get("token") == self._me["token"]:
                self.path.unlink()
