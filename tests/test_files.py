"""ppt_jax.files: a file is replaced whole, or left as it was when the writer fails."""

import os

import pytest

from ppt_jax import files


def test_write_replaces_whole_and_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    files.write_text(path, "one\n")
    files.write_text(path, "two\n")
    assert path.read_text() == "two\n"
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "two\n" and os.listdir(tmp_path) == ["a.json"]
