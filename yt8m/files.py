"""Writing files atomically: the one helper every writer of the project uses."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, before_rename=None, **open_options):
    """Opens a temporary file beside `path` for writing and renames it to `path` when the block ends without an
    error: a reader never sees a half-written file, and a failure (or an interrupt) leaves the previous file, or
    none, and no temporary one. `before_rename(tmp_path)`, if given, checks the written file first (raising stops
    the rename)."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, mode, **open_options) as f:
            yield f
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
