"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder. The one
way the project writes a file that a reader or a crash must never see half-written."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"  # catalogs skip and clean files named so


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A new file that appears at `path` only when the block ends without an error; on an error
    nothing is left behind (the old file, if any, stays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` so that no reader, and no crash, ever leaves half a file there."""
    with atomic_open(path) as f:
        f.write(data)
