"""The datasets under $SLT_HOME/datasets: each entry (not starting with '.') is one, its
format detected by the trainer. Descriptions are cached until the entry changes (or for
TTL_S, which catches changes deeper inside a folder)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from store.settings import DATASET_NAME
from trainer.data import DatasetError, open_dataset

log = logging.getLogger(__name__)

TTL_S = 300.0
_cache: dict[Path, tuple[int, float, dict]] = {}
_lock = threading.Lock()


def describe(path: Path) -> dict:
    """name, format and image count of one dataset (`error` instead if it cannot be opened)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as e:
        return {"name": path.name, "format": None, "images": 0, "error": str(e.strerror or e)}
    with _lock:
        hit = _cache.get(path)
    if hit and hit[0] == mtime and time.monotonic() - hit[1] < TTL_S:
        return hit[2]
    try:
        ds = open_dataset(path)
        info = {"name": path.name, "format": ds.format, "images": len(ds), "skipped": ds.skipped}
    except DatasetError as e:
        info = {"name": path.name, "format": None, "images": 0,
                "error": str(e).replace(str(path), path.name)}
    with _lock:
        _cache[path] = (mtime, time.monotonic(), info)
    return info


def list_datasets(datasets_dir: Path) -> list[dict]:
    if not datasets_dir.is_dir():
        return []
    return [describe(p) for p in sorted(datasets_dir.iterdir())
            if not p.name.startswith(".") and DATASET_NAME.match(p.name)]
