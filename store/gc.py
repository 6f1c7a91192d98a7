"""Collecting blobs that nothing refers to any more (deleted masks, old checkpoints, chunks of
an interrupted upload).

Two sweeps at least `grace_s` apart: a blob unreferenced in the first is only remembered
(`slt:gc:candidates`, id -> first seen); it is deleted in a later sweep if it is still
unreferenced after the grace, so a blob written just before the record that names it is
never lost.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import redis

from store.blobs import BlobStore

log = logging.getLogger(__name__)

CANDIDATES = "slt:gc:candidates"


def collect_blobs(client: redis.Redis, blobs: BlobStore, referenced: Iterable[Callable[[], set[str]]],
                  grace_s: float = 3600.0, now: float | None = None) -> int:
    """One sweep; returns the blobs deleted."""
    now = now or time.time()
    keep: set[str] = set()
    for source in referenced:
        keep |= source()
    seen = {k.decode(): float(v) for k, v in client.hgetall(CANDIDATES).items()}
    deleted, fresh = 0, {}
    present = set(blobs.ids())
    for blob_id in present:
        if blob_id in keep:
            continue
        first = seen.get(blob_id)
        if first is None:
            fresh[blob_id] = now
        elif now - first >= grace_s:
            blobs.delete(blob_id)
            client.hdel(CANDIDATES, blob_id)
            deleted += 1
    gone = [b for b in seen if b in keep or b not in present]
    if gone:
        client.hdel(CANDIDATES, *gone)
    if fresh:
        client.hset(CANDIDATES, mapping=fresh)
    if deleted:
        log.info("blob collection: %d unreferenced blobs deleted", deleted)
    return deleted
