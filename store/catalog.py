"""The one mask catalog every host sees: an index with each mask's metadata and evaluations in
Redis, the files as content-addressed blobs, and each host's disk as a cache of files.

`slt:masks` is a sorted set of mask ids by the time they entered the catalog; `slt:mask:<id>`
a hash with `info` (the file's metadata, as `MaskFile.info()` gives it), `evaluation`
(`{split: metrics}`), `bytes` and `added`. A mask is in the catalog iff it is in the index;
a host without the file fetches the blob, checks its sha256 and keeps it under its own
`$SLT_HOME/masks`.
"""
from __future__ import annotations

import json
import logging
import time

import redis

from store.blobs import BlobStore
from store.domains import CHANNEL
from trainer.digest import sha256_bytes
from trainer.masks import MASK_ID, MaskCatalog, MaskError, MaskFile, check_base, decode_mask

log = logging.getLogger(__name__)

INDEX = "slt:masks"


def _entry_key(mask_id: str) -> str:
    return f"slt:mask:{mask_id}"


def _entry(mask_id: str, raw: dict) -> dict | None:
    """An index hash as the catalog's entry dict; None for a mask not (or no longer) indexed."""
    if not raw or b"info" not in raw:
        return None
    return {"mask_id": mask_id, "info": json.loads(raw[b"info"]),
            "evaluation": json.loads(raw[b"evaluation"]) if b"evaluation" in raw else {},
            "bytes": int(raw.get(b"bytes", 0)), "added": float(raw.get(b"added", 0))}


def decode_untrusted(data: bytes) -> MaskFile:
    """decode_mask for bytes from outside (an upload, a blob): whatever a malformed file makes
    the parser raise becomes a MaskError naming the defect."""
    try:
        return decode_mask(data)
    except MaskError:
        raise
    except Exception as e:  # a header the parser did not foresee (odd shapes, offsets, types)
        raise MaskError(f"malformed safetensors header or tensor entry ({type(e).__name__}: {e})") from None


class SharedCatalog:
    """Index and evaluations in Redis, files as blobs, `local` as this host's cache of files."""

    def __init__(self, client: redis.Redis, blobs: BlobStore, local: MaskCatalog):
        self.r, self.blobs, self.local = client, blobs, local

    # ---- writing ------------------------------------------------------------------------
    def publish(self, data: bytes, base_sha: str | None = None,
                mask: MaskFile | None = None) -> tuple[str, bool]:
        """Verify mask bytes (MaskError, ForeignMaskError for another base) and put them in the
        catalog: blob, index entry, this host's file. Returns (mask_id, already indexed).
        Idempotent; the blob is written before the index names it. `mask`: these bytes already
        decoded by the caller (decoding a width-1 file costs ~70 ms), not decoded again."""
        if mask is None or mask.mask_id != sha256_bytes(data):
            mask = decode_untrusted(data)
        if base_sha is not None:
            check_base(mask, base_sha)
        try:
            info = mask.info()
        except Exception as e:
            raise MaskError(f"mask metadata cannot be read ({type(e).__name__}: {e})") from None
        self.local.add(data, mask=mask)
        self.blobs.put(data)
        now = time.time()
        with self.r.pipeline() as p:
            p.hsetnx(_entry_key(mask.mask_id), "info", json.dumps(info))
            p.hsetnx(_entry_key(mask.mask_id), "bytes", len(data))
            p.hsetnx(_entry_key(mask.mask_id), "added", now)
            p.zadd(INDEX, {mask.mask_id: now}, nx=True)
            new = p.execute()[-1]
        return mask.mask_id, not new

    def record_evaluation(self, mask_id: str, by_split: dict) -> None:
        """Merge `{split: metrics}` into the mask's evaluation (shared, and this host's sidecar)."""
        key = _entry_key(mask_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    old = pipe.hget(key, "evaluation")
                    merged = {**(json.loads(old) if old else {}), **by_split}
                    pipe.multi()
                    pipe.hset(key, "evaluation", json.dumps(merged))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if mask_id in self.local:
            self.local.record_metrics(mask_id, by_split)

    def delete(self, mask_id: str) -> bool:
        """Remove a mask everywhere: index entry, blob, this host's file; other hosts drop
        theirs when they get the message. False if it was not in the catalog."""
        with self.r.pipeline() as p:
            p.zrem(INDEX, mask_id)
            p.delete(_entry_key(mask_id))
            removed = p.execute()[0]
        self.blobs.delete(mask_id)
        self.drop_local(mask_id)
        self.r.publish(CHANNEL, json.dumps({"mask": mask_id, "deleted": True}))
        return bool(removed)

    def drop_local(self, mask_id: str) -> None:
        self.local.remove(mask_id)

    def sync_local(self) -> int:
        """Publish this host's catalog files that the index lacks (masks made before the
        catalog was shared, or copied in by hand); returns how many."""
        n = 0
        for mask_id in self.local.ids():
            if mask_id in self:
                continue
            try:
                data = self.local.bytes(mask_id)
                self.publish(data)
                sidecar = self.local.metrics(mask_id)
                if sidecar:
                    self.record_evaluation(mask_id, sidecar)
                n += 1
            except (MaskError, OSError, ValueError) as e:
                log.warning("catalog file %s not published: %s", mask_id[:12], e)
        if n:
            log.info("%d local catalog files published to the shared catalog", n)
        return n

    # ---- reading ------------------------------------------------------------------------
    def __contains__(self, mask_id: str) -> bool:
        return bool(MASK_ID.match(mask_id or "")) and self.r.zscore(INDEX, mask_id) is not None

    def ids(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Newest first."""
        end = -1 if limit is None else offset + limit - 1
        return [i.decode() for i in self.r.zrevrange(INDEX, offset, end)]

    def count(self) -> int:
        return int(self.r.zcard(INDEX))

    def entry(self, mask_id: str) -> dict | None:
        """{"mask_id", "info", "evaluation", "bytes", "added"}, or None if not in the catalog."""
        if not MASK_ID.match(mask_id or ""):
            return None
        return _entry(mask_id, self.r.hgetall(_entry_key(mask_id)))

    def entries(self, ids: list[str]) -> list[dict | None]:
        """entry() of many ids in one round trip."""
        with self.r.pipeline(transaction=False) as p:
            for mask_id in ids:
                p.hgetall(_entry_key(mask_id))
            return [_entry(mask_id, raw) for mask_id, raw in zip(ids, p.execute())]

    def _blob(self, mask_id: str) -> bytes:
        """The file from the shared store (its sha256 checked); KeyError if it has none."""
        data = self.blobs.get(mask_id) if MASK_ID.match(mask_id or "") else None
        if data is None:
            raise KeyError(mask_id)
        log.info("mask %s fetched from the shared store", mask_id[:12])
        return data

    def bytes(self, mask_id: str) -> bytes:
        """The file: this host's copy, else the blob (its sha256 checked), then kept here.
        KeyError if neither has it."""
        if mask_id in self.local:
            return self.local.bytes(mask_id)
        data = self._blob(mask_id)
        self.local.add(data)
        return data

    def read(self, mask_id: str) -> MaskFile:
        """The decoded file (KeyError if unknown, MaskError if malformed or not its id); a
        fetched file is decoded once, then kept here."""
        if mask_id in self.local:
            mask = decode_untrusted(self.local.bytes(mask_id))
        else:
            data = self._blob(mask_id)
            mask = decode_untrusted(data)
            self.local.add(data, mask=mask)
        if mask.mask_id != mask_id:
            raise MaskError(f"file of {mask_id[:12]} does not hash to its id (disk corruption?)")
        return mask

    def referenced_blobs(self) -> set[str]:
        return set(self.ids())
