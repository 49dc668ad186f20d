"""The PTv3 recipe end to end through `python -m ppt_jax.main`: a Pointcept PT-v3m1 checkpoint imported
(tests/test_ptv3_parity.py's), fine-tuned from with the command the importer prints (configs/finetune.py:
ptv3 at the tiny data sizes: CE + Lovasz, AdamW with the "block" group; the train step compiles once),
and the export evaluated with --checkpoint=export."""

import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cpu_env, records
from test_ptv3_parity import imported, ref  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.slow


def _main(*flags):
    out = subprocess.run([sys.executable, "-m", "ppt_jax.main", *flags], cwd=REPO,
                         env=cpu_env(JAX_LOG_COMPILES="1"), capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def test_imported_ptv3_finetunes_and_evaluates_through_main(imported, tmp_path):  # noqa: F811
    _, config, export, printed = imported
    line = [line for line in printed.splitlines() if line.startswith("fine-tune: ")][0]
    flags = shlex.split(line.split("ppt_jax.main", 1)[1])
    assert flags[0] == "--config=configs/finetune.py:ptv3"
    out = _main("--config=configs/finetune.py:ptv3,tiny", *flags[1:], f"--workdir={tmp_path / 'F'}",
                "--config.train.steps=3")
    assert out.stderr.count("Compiling jit(train_step)") == 1, out.stderr[-3000:]
    assert records(tmp_path / "F", "start")[0]["init_arrays_loaded"] == 188    # every array of the import
    losses = [r["last_loss"] for r in records(tmp_path / "F", "train")]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert "PPT per-dataset results after 3 steps" in out.stdout

    # The fine-tune run's validation scenes: the same eval program (a persistent-cache hit).
    val = tmp_path / "F" / "synthetic" / "ScanNet" / "val"
    out = _main(f"--config={config}", "--mode=eval", "--checkpoint=export", f"--config.init.export_dir={export}",
                f"--workdir={tmp_path / 'E'}", "--config.eval.datasets=('ScanNet',)",
                f"--config.eval.val_dirs.ScanNet={val}")
    assert f"single-pass val of the export {export}" in out.stdout and "ScanNet" in out.stdout
