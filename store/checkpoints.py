"""Search checkpoints in the shared store, so a job taken over on another host resumes there.

The worker running a job publishes its local checkpoint file at most every
`SLT_CHECKPOINT_PUBLISH_S`, and only when it is at most `SLT_CHECKPOINT_MAX_BYTES`: chunks in
the blob store and a manifest `slt:job:<id>:checkpoint` (`{"sha256", "bytes", "chunks",
"iteration", "at"}`). Only the newest is kept.

Fencing: the manifest is written (one Lua script) only while the job's lease still holds the
publisher's token, so a worker that lost its lease cannot overwrite the checkpoint of the one
that took the job over, nor delete its chunks. The replaced manifest's chunks are deleted only
when no other manifest names them and nobody put them again since (content addressing lets two
jobs share a chunk); the rest are left to the collector (store/gc.py).

A worker that takes the job over fetches it (every chunk and the whole verified) into its own
job folder when it has no local one. A missing or corrupt checkpoint is None (the job starts
from its start); a transient store fault raises StoreUnavailable (the caller retries).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis

from store.blobs import (
    BlobError,
    BlobStore,
    delete_unshared_chunks,
    get_chunked,
    put_chunked,
    unavailable_if_transient,
)
from store.lifecycle import job_key, lease_key

log = logging.getLogger(__name__)


def _key(job_id: str) -> str:
    return job_key(job_id, "checkpoint")


# KEYS: lease, manifest. ARGV: token, new manifest. {1, replaced manifest or ''} when the lease
# holds the token (the manifest is written), else {0} (fenced out: nothing written).
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local old = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2])
return {1, old or ''}
"""


class SharedCheckpoints:
    def __init__(self, client: redis.Redis, blobs: BlobStore, max_bytes: int,
                 named_elsewhere: Callable[[], set[str]] | None = None):
        """`named_elsewhere`: chunks other kinds of manifest name (datasets'), kept when a
        checkpoint is replaced or dropped; every checkpoint manifest is always asked."""
        self.r, self.blobs, self.max_bytes = client, blobs, max_bytes
        self.named_elsewhere = named_elsewhere or set
        self._publish = client.register_script(_PUBLISH)

    def manifest(self, job_id: str) -> dict | None:
        raw = self.r.get(_key(job_id))
        return json.loads(raw) if raw else None

    def publish(self, job_id: str, path: Path, iteration: int, token: str) -> dict | None:
        """Publish `path` as the job's checkpoint, as the holder of lease `token`; the manifest,
        or None when not published: over the size cap, or fenced out (the lease is no longer
        `token`'s; then nothing is written or deleted)."""
        size = path.stat().st_size
        if size > self.max_bytes:
            log.info("job %s: checkpoint of %d bytes is over SLT_CHECKPOINT_MAX_BYTES; kept local",
                     job_id, size)
            return None
        if self.r.get(lease_key(job_id)) != token.encode():  # no chunks for a stale writer
            log.warning("job %s: checkpoint not published: this worker no longer holds the lease",
                        job_id)
            return None
        with path.open("rb") as f:
            manifest = {**put_chunked(self.blobs, f), "iteration": iteration, "at": time.time()}
        done = self._publish(keys=[lease_key(job_id), _key(job_id)], args=[token, json.dumps(manifest)])
        if not int(done[0]):
            # the chunks just put are named by nothing: the collector's, after its grace
            log.warning("job %s: checkpoint not published: the lease was lost while it was written",
                        job_id)
            return None
        if done[1]:
            old = json.loads(done[1])
            self._delete_chunks(old, keep=set(manifest["chunks"]))
        return manifest

    def _delete_chunks(self, old: dict, keep: set[str]) -> None:
        try:
            named = keep | self.referenced() | self.named_elsewhere()
        except Exception as e:  # not knowing what else names them, delete none
            log.warning("older checkpoint's chunks left to the collector: %s", e)
            return
        delete_unshared_chunks(self.blobs, old["chunks"], named, put_before=float(old.get("at", 0)))

    def fetch(self, job_id: str, dest: Path) -> int | None:
        """Write the job's published checkpoint to `dest`; its iteration, or None if there is
        none or it cannot be read back whole (the job then starts from its start).
        StoreUnavailable when the store fails transiently (retry later: it may be whole)."""
        with unavailable_if_transient(f"checkpoint of job {job_id}"):
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
            self._delete_chunks(manifest, keep=set())

    def referenced(self) -> set[str]:
        out: set[str] = set()
        for key in self.r.scan_iter(match=job_key("*", "checkpoint"), count=500):
            raw = self.r.get(key)
            if raw:
                out.update(json.loads(raw)["chunks"])
        return out
