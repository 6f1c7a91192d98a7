"""Real feature statistics in the shared store: a dataset's moments are computed once, by
whichever worker first needs them, and every other host fetches the file.

The files are the trainer's moment cache (`$SLT_HOME/cache/moments/<dataset sha256[:16]>-
<extractor>-<preprocessing>.safetensors`); the hash `slt:moments` maps each file name to its
blob. A fetched file is verified by its sha256 before it enters the local cache.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import redis

from store.blobs import BlobStore, unavailable_if_transient
from trainer.atomic_write import write_atomic

log = logging.getLogger(__name__)

INDEX = "slt:moments"
_NAME = re.compile(r"^[A-Za-z0-9._-]+\.safetensors$")


class SharedMoments:
    def __init__(self, client: redis.Redis, blobs: BlobStore):
        self.r, self.blobs = client, blobs

    def pull(self, moments_dir: Path, prefix: str) -> int:
        """Fetch the shared moment files whose names start with `prefix` that this host lacks.
        A missing or corrupt blob is skipped (computed again here); a transient store fault
        raises StoreUnavailable (retry later rather than compute what the store holds)."""
        n = 0
        with unavailable_if_transient("feature statistics"):
            index = self.r.hgetall(INDEX)
        for raw_name, blob_id in index.items():
            name = raw_name.decode()
            if not name.startswith(prefix) or not _NAME.match(name) or (moments_dir / name).exists():
                continue
            data = self.blobs.get(blob_id.decode())
            if data is None:
                continue
            write_atomic(moments_dir / name, data)
            n += 1
        if n:
            log.info("%d feature-statistics files fetched from the shared store", n)
        return n

    def push(self, moments_dir: Path, prefix: str) -> int:
        """Publish this host's moment files starting with `prefix` that the store lacks."""
        n = 0
        if not moments_dir.is_dir():
            return 0
        for p in moments_dir.glob(f"{prefix}*.safetensors"):
            if self.r.hexists(INDEX, p.name):
                continue
            self.r.hset(INDEX, p.name, self.blobs.put(p.read_bytes()))
            n += 1
        return n

    def referenced(self) -> set[str]:
        return {v.decode() for v in self.r.hvals(INDEX)}
