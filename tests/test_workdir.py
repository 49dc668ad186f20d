"""The work directory: metrics records after a resume, and every file on a non-local file system."""

import json

from etils import epath

from ppt_jax.train import evaluate, loop


def _line(event, step, **kw):
    return json.dumps({"event": event, "step": step, **kw})


def test_a_resumed_run_leaves_one_record_per_step():
    killed = [_line("start", 0)] + [_line("train", s) for s in range(1, 10)]
    killed += [_line("eval", 7), _line("nonfinite", 6), _line("nonfinite", 7), '{"event": "tr']
    kept = loop.drop_replayed(killed, 7)          # checkpoint at 7, killed after step 9
    rerun = kept + [_line("start", 7)] + [_line("train", s) for s in range(8, 12)]
    steps = [json.loads(x)["step"] for x in rerun if json.loads(x)["event"] == "train"]
    assert steps == list(range(1, 12))
    assert [json.loads(x)["step"] for x in kept if json.loads(x)["event"] == "nonfinite"] == [6]
    assert _line("eval", 7) in kept


def test_recorder_on_object_storage_rewrites_and_appends(ram_dir):
    rec = loop.Recorder(ram_dir)
    for s in range(1, 6):
        rec.write({"event": "train", "step": s}, {"train/loss": 1.0 / s})
    rec.close()
    rec = loop.Recorder(ram_dir, resume_step=3)
    rec.write({"event": "train", "step": 4})
    rec.close()
    lines = (epath.Path(ram_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (epath.Path(ram_dir) / "tb").iterdir())


def test_object_storage_work_directories_stay_uris():
    """os.path.abspath turned gs://B/x into <cwd>/gs:/B/x; Orbax needs absolute paths."""
    from ppt_jax.train import checkpoint

    assert str(checkpoint.absolute("gs://bucket/runs/joint")) == "gs://bucket/runs/joint"
    assert str(checkpoint.absolute("gs://bucket/runs/joint") / "checkpoints") == \
        "gs://bucket/runs/joint/checkpoints"
    assert checkpoint.absolute("runs/x").is_absolute()


def test_results_table_on_object_storage(ram_dir, capsys):
    from types import SimpleNamespace

    run = SimpleNamespace(workdir=ram_dir, synthetic=True, text_info={"note": "", "used": "minilm"})
    result = {"mIoU": 0.5, "mAcc": 0.6, "allAcc": 0.7, "points": 10, "iou": {"wall": 0.5}}
    evaluate.final_table(run, {"S3DIS": result}, "after 3 steps")
    text = (epath.Path(ram_dir) / "results.txt").read_text()
    assert text.startswith("PPT per-dataset results after 3 steps") and "S3DIS" in text
    assert "S3DIS" in capsys.readouterr().out
