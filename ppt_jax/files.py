"""Files that appear whole or not at all: written under a temporary name beside the target, then
renamed over it in one step (a crash leaves the old file or none, never half of one).

Paths are `etils.epath` paths: local, or object storage (gs://...), where the rename is the store's
copy-then-delete and only a reader racing the writer could see the temporary name.
"""

import contextlib
import os

from etils import epath


@contextlib.contextmanager
def atomic_path(path):
    """`with atomic_path(p) as tmp:` write the file `tmp` (an epath.Path); on success it replaces `p`,
    on an error it is removed. The temporary name carries the process id: concurrent writers do not
    collide."""
    path = epath.Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    """`text` as UTF-8 with '\\n' line ends."""
    write_bytes(path, text.encode("utf-8"))
