"""LSUN lmdb: keys -> encoded image bytes (WebP in the official dumps), center-cropped to square, resized."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from trainer.data.base import DatasetError, ImageDataset

# lmdb refuses to open one environment twice in a process, so datasets share one per (folder, pid).
_ENVS: dict[tuple[str, int], lmdb.Environment] = {}
_ENVS_LOCK = threading.Lock()


def _env(db_dir: Path) -> lmdb.Environment:
    key = (os.path.realpath(db_dir), os.getpid())  # a forked child opens its own
    with _ENVS_LOCK:
        if key not in _ENVS:
            _ENVS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False, meminit=False,
                                   max_readers=126, subdir=True)
        return _ENVS[key]


class LsunDataset(ImageDataset):
    """An lmdb directory (with data.mdb); key = the lmdb key as text, in lmdb's (bytewise) order."""

    format = "lsun"

    def __init__(self, root: Path, name: str | None = None, cache_dir: Path | None = None,
                 db_dir: Path | None = None):
        root = Path(root)
        self.db_dir = Path(db_dir or root)
        try:
            with _env(self.db_dir).begin() as txn:
                raw_keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as e:
            raise DatasetError(f"unreadable lmdb {self.db_dir}: {e}") from None
        if not raw_keys:
            raise DatasetError(f"no images in lmdb {self.db_dir} (0 keys)")
        self._raw_keys = raw_keys
        keys = [k.decode("utf-8", "backslashreplace") for k in raw_keys]
        super().__init__(root, name or root.name, keys, cache_dir)

    def _read(self, i: int) -> bytes:
        with _env(self.db_dir).begin(buffers=False) as txn:
            raw = txn.get(self._raw_keys[i])
        if raw is None:
            raise DatasetError(f"key {self.keys[i]!r} vanished from {self.db_dir}")
        return raw

    def _where(self, i: int) -> str:
        return f"{self.db_dir}[{self.keys[i]}]"

    def _fingerprint(self) -> list:
        s = os.stat(self.db_dir / "data.mdb")
        return [["data.mdb", s.st_size, s.st_mtime_ns]]
