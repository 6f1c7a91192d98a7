"""Search checkpoints in the shared store, so a job taken over on another host resumes there.

The worker running a job publishes its local checkpoint file at most every
`SLT_CHECKPOINT_PUBLISH_S`, and only when it is at most `SLT_CHECKPOINT_MAX_BYTES`: chunks in
the blob store and a manifest `slt:job:<id>:checkpoint` (`{"sha256", "bytes", "chunks",
"iteration", "at"}`). Only the newest is kept: the older one's chunks are dropped once the new
manifest is in place. A worker that takes the job over fetches it (every chunk and the whole
verified) into its own job folder when it has no local one.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import redis

from store.blobs import BlobError, BlobStore, delete_chunks, get_chunked, put_chunked

log = logging.getLogger(__name__)


def _key(job_id: str) -> str:
    return f"slt:job:{job_id}:checkpoint"


class SharedCheckpoints:
    def __init__(self, client: redis.Redis, blobs: BlobStore, max_bytes: int):
        self.r, self.blobs, self.max_bytes = client, blobs, max_bytes

    def manifest(self, job_id: str) -> dict | None:
        raw = self.r.get(_key(job_id))
        return json.loads(raw) if raw else None

    def publish(self, job_id: str, path: Path, iteration: int) -> dict | None:
        """Publish `path` as the job's checkpoint; None when it is over the size cap."""
        size = path.stat().st_size
        if size > self.max_bytes:
            log.info("job %s: checkpoint of %d bytes is over SLT_CHECKPOINT_MAX_BYTES; kept local",
                     job_id, size)
            return None
        old = self.manifest(job_id)
        with path.open("rb") as f:
            manifest = {**put_chunked(self.blobs, f), "iteration": iteration, "at": time.time()}
        self.r.set(_key(job_id), json.dumps(manifest))
        if old:
            delete_chunks(self.blobs, set(old["chunks"]) - set(manifest["chunks"]))
        return manifest

    def fetch(self, job_id: str, dest: Path) -> int | None:
        """Write the job's published checkpoint to `dest`; its iteration, or None if there is
        none or it cannot be read back whole (the job then starts from its start)."""
        manifest = self.manifest(job_id)
        if manifest is None:
            return None
        try:
            get_chunked(self.blobs, manifest, dest)
        except BlobError as e:
            log.warning("job %s: published checkpoint unusable (%s)", job_id, e)
            return None
        return int(manifest["iteration"])

    def drop(self, job_id: str) -> None:
        manifest = self.manifest(job_id)
        self.r.delete(_key(job_id))
        if manifest:
            delete_chunks(self.blobs, manifest["chunks"])

    def referenced(self) -> set[str]:
        out: set[str] = set()
        for key in self.r.scan_iter(match="slt:job:*:checkpoint", count=500):
            raw = self.r.get(key)
            if raw:
                out.update(json.loads(raw)["chunks"])
        return out
