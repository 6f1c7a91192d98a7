"""The one mask catalog every host sees: an index with each mask's metadata and evaluations in
Redis, the files as content-addressed blobs, and each host's disk as a cache of files.

`slt:masks` is a sorted set of mask ids by the time they entered the catalog; `slt:mask:<id>`
a hash with `info` (the file's metadata, as `MaskFile.info()` gives it), `evaluation`
(`{split: metrics}`), `bytes` and `added`. A mask is in the catalog iff it is in the index;
a host without the file fetches the blob, checks its sha256 and keeps it under its own
`$SLT_HOME/masks`, a cache bounded in bytes (`local_budget_bytes`): least recently used files
that the shared store holds are evicted, never a file that exists only here.

A deletion is a durable fact: `slt:masks:deleted` (id -> time deleted) is a tombstone that
every host honours, so a host that was down when a mask was deleted drops its copy instead of
publishing it again (`sync_local`), no read serves it (`bytes`, `read`), no evaluation
recreates its entry and no promotion names it. Only an explicit re-import
(`publish(..., lift_tombstone=True)`, POST /masks/import) brings a deleted mask back.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import redis

from store.blobs import BlobStore
from store.domains import CHANNEL
from store.faults import describe, transient
from trainer.digest import sha256_bytes
from trainer.masks import MASK_ID, MaskCatalog, MaskError, MaskFile, check_base, decode_mask

log = logging.getLogger(__name__)

INDEX = "slt:masks"
TOMBSTONES = "slt:masks:deleted"  # mask_id -> unix time it was deleted

# Index a mask unless it is tombstoned (then -1), or lift the tombstone when asked (an
# explicit re-import): one atomic step, so a deletion racing a publish always wins or loses
# whole. KEYS: entry, index, tombstones; ARGV: id, info, bytes, now, lift ("1"/"0").
_PUBLISH = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  if ARGV[5] ~= '1' then return -1 end
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('HSETNX', KEYS[1], 'info', ARGV[2])
redis.call('HSETNX', KEYS[1], 'bytes', ARGV[3])
redis.call('HSETNX', KEYS[1], 'added', ARGV[4])
return redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
"""


class DeletedMask(KeyError):
    """The mask was deleted from the catalog (a tombstone names it); only an explicit
    re-import brings it back. A KeyError, so every "not in the catalog" path treats it so."""

    def __init__(self, mask_id: str, deleted_at: float | None = None):
        when = time.strftime(" at %Y-%m-%dT%H:%M:%SZ", time.gmtime(deleted_at)) if deleted_at else ""
        super().__init__(mask_id)
        self.mask_id = mask_id
        self.message = (f"mask {mask_id} was deleted from the catalog{when}; "
                        "POST /masks/import of its file brings it back")

    def __str__(self) -> str:
        return self.message


# How a mask was made (its job), written once, only for an indexed mask. KEYS: entry; ARGV: json.
_PROVENANCE = """
if redis.call('HEXISTS', KEYS[1], 'info') == 0 then return -1 end
return redis.call('HSETNX', KEYS[1], 'provenance', ARGV[1])
"""


def _entry_key(mask_id: str) -> str:
    return f"slt:mask:{mask_id}"


def _entry(mask_id: str, raw: dict) -> dict | None:
    """An index hash as the catalog's entry dict; None for a mask not (or no longer) indexed."""
    if not raw or b"info" not in raw:
        return None
    return {"mask_id": mask_id, "info": json.loads(raw[b"info"]),
            "evaluation": json.loads(raw[b"evaluation"]) if b"evaluation" in raw else {},
            "provenance": json.loads(raw[b"provenance"]) if b"provenance" in raw else {},
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


class UnindexedMask(KeyError):
    """A mask that is not in the catalog's index (a file or blob alone does not make one)."""

    def __init__(self, mask_id: str):
        super().__init__(mask_id)
        self.mask_id = mask_id

    def __str__(self) -> str:
        return f"mask {self.mask_id} is not in the catalog; POST /masks/import adds it"


class SharedCatalog:
    """Index and evaluations in Redis, files as blobs, `local` as this host's cache of files."""

    def __init__(self, client: redis.Redis, blobs: BlobStore, local: MaskCatalog,
                 local_budget_bytes: int = 0, protected: Callable[[], set[str]] | None = None):
        """`local_budget_bytes`: the most this host's mask files may take (0: unbounded);
        `protected`: ids evicted last (the masks this host's domains serve or pin)."""
        self.r, self.blobs, self.local = client, blobs, local
        self.local_budget_bytes = local_budget_bytes
        self.protected = protected or set

    # ---- tombstones ---------------------------------------------------------------------
    def deleted_at(self, mask_id: str) -> float | None:
        """When the mask was deleted, or None if it was not (or Redis cannot say just now: a
        host keeps serving its files through a store outage; the tombstone wins once it is back)."""
        try:
            raw = self.r.hget(TOMBSTONES, mask_id)
        except redis.RedisError as e:
            if not transient(e):
                raise
            log.warning("tombstone of mask %s not checked: %s", mask_id[:12], describe(e))
            return None
        return float(raw) if raw is not None else None

    def deleted(self, ids: list[str]) -> set[str]:
        """The tombstoned ones among `ids` (one round trip)."""
        if not ids:
            return set()
        return {i for i, raw in zip(ids, self.r.hmget(TOMBSTONES, ids)) if raw is not None}

    def _refuse_deleted(self, mask_id: str) -> None:
        """DeletedMask (and this host's copy dropped) if `mask_id` is tombstoned."""
        at = self.deleted_at(mask_id)
        if at is not None:
            self.drop_local(mask_id)
            raise DeletedMask(mask_id, at)

    def promotion_guard(self, mask_id: str) -> tuple[list[str], Callable]:
        """What DomainRegistry.promote checks as it commits: the mask is indexed and not
        tombstoned (UnindexedMask, DeletedMask), its tombstone and entry watched, so a deletion
        racing the promotion retries it and the retry refuses."""
        def check(pipe: redis.client.Pipeline) -> None:
            at = pipe.hget(TOMBSTONES, mask_id)
            if at is not None:
                raise DeletedMask(mask_id, float(at))
            if pipe.zscore(INDEX, mask_id) is None:
                raise UnindexedMask(mask_id)
        return [TOMBSTONES, _entry_key(mask_id)], check

    def drop_deleted_local(self) -> list[str]:
        """Remove this host's files of tombstoned masks (a deletion this host did not hear)."""
        gone = sorted(self.deleted(self.local.ids()))
        for mask_id in gone:
            self.drop_local(mask_id)
        if gone:
            log.info("%d files of deleted masks removed from this host", len(gone))
        return gone

    # ---- writing ------------------------------------------------------------------------
    def publish(self, data: bytes, base_sha: str | None = None,
                mask: MaskFile | None = None, lift_tombstone: bool = False) -> tuple[str, bool]:
        """Verify mask bytes (MaskError, ForeignMaskError for another base) and put them in the
        catalog: blob, index entry, this host's file. Returns (mask_id, already indexed).
        Idempotent; the blob is written before the index names it. `mask`: these bytes already
        decoded by the caller (decoding a width-1 file costs ~70 ms), not decoded again.
        DeletedMask for a deleted mask, unless `lift_tombstone` (an admin's explicit re-import)."""
        if mask is None or mask.mask_id != sha256_bytes(data):
            mask = decode_untrusted(data)
        if base_sha is not None:
            check_base(mask, base_sha)
        try:
            info = mask.info()
        except Exception as e:
            raise MaskError(f"mask metadata cannot be read ({type(e).__name__}: {e})") from None
        if not lift_tombstone:
            self._refuse_deleted(mask.mask_id)  # before any write: nothing to undo
        fresh_file = mask.mask_id not in self.local
        self.local.add(data, mask=mask)
        self.local.touch(mask.mask_id)
        self.blobs.put(data)
        now = time.time()
        new = int(self.r.eval(_PUBLISH, 3, _entry_key(mask.mask_id), INDEX, TOMBSTONES, mask.mask_id,
                              json.dumps(info), len(data), repr(now), "1" if lift_tombstone else "0"))
        if new < 0:  # deleted between the check and the index write: the deletion wins
            self.drop_local(mask.mask_id)
            raise DeletedMask(mask.mask_id, self.deleted_at(mask.mask_id))
        if lift_tombstone:
            log.info("mask %s published (a tombstone, if any, lifted)", mask.mask_id[:12])
        if fresh_file:
            self.bound_local(keep=mask.mask_id)
        return mask.mask_id, not new

    def record_provenance(self, mask_id: str, provenance: dict) -> bool:
        """Keep how the mask was made (the job that searched it: dataset name, request, config,
        search time and device), which its file does not hold, for its model card. The first
        record stays (a retried or second job finding the same bytes changes nothing); False
        for a mask not indexed."""
        return int(self.r.eval(_PROVENANCE, 1, _entry_key(mask_id), json.dumps(provenance))) == 1

    def record_evaluation(self, mask_id: str, by_split: dict) -> bool:
        """Merge `{split: metrics}` into the mask's evaluation (shared, and this host's sidecar).
        False, and nothing written, for a mask not (or no longer) in the catalog: a deletion
        racing the evaluation aborts the transaction (WATCH), so no orphan entry is left."""
        key = _entry_key(mask_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.hexists(key, "info"):
                        pipe.unwatch()
                        log.info("evaluation of mask %s not recorded: not in the catalog", mask_id[:12])
                        return False
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
        return True

    def delete(self, mask_id: str) -> bool:
        """Remove a mask everywhere: a tombstone first (so nothing republishes it), then index
        entry, blob, this host's file; other hosts drop theirs when they get the message, or
        when they next read, sync or sweep it. False if it was not in the catalog."""
        with self.r.pipeline() as p:
            p.hset(TOMBSTONES, mask_id, repr(time.time()))
            p.zrem(INDEX, mask_id)
            p.delete(_entry_key(mask_id))
            removed = p.execute()[1]
        self.blobs.delete(mask_id)
        self.drop_local(mask_id)
        self.r.publish(CHANNEL, json.dumps({"mask": mask_id, "deleted": True}))
        return bool(removed)

    def drop_local(self, mask_id: str) -> None:
        """Remove this host's file of the mask and its evaluation sidecar."""
        self.local.remove(mask_id)

    def sync_local(self) -> int:
        """Publish this host's catalog files that the index lacks (masks made before the
        catalog was shared, copied in by hand, or lost with the store's data); a deleted
        mask's file is removed instead. Returns how many were published."""
        n = 0
        self.drop_deleted_local()
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
            except (MaskError, OSError, ValueError, KeyError) as e:  # KeyError: deleted meanwhile
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

    def _local_bytes(self, mask_id: str) -> bytes | None:
        """This host's copy (marked used), or None; a file evicted under us is just absent."""
        if mask_id not in self.local:
            return None
        try:
            data = self.local.bytes(mask_id)
        except (KeyError, FileNotFoundError):
            return None
        self.local.touch(mask_id)
        return data

    def bytes(self, mask_id: str) -> bytes:
        """The file: this host's copy, else the blob (its sha256 checked), then kept here.
        KeyError if neither has it, DeletedMask (this host's copy dropped) if it was deleted."""
        self._refuse_deleted(mask_id)
        data = self._local_bytes(mask_id)
        if data is not None:
            return data
        data = self._blob(mask_id)
        self.local.add(data)
        self.local.touch(mask_id)
        self.bound_local(keep=mask_id)
        return data

    def read(self, mask_id: str) -> MaskFile:
        """The decoded file (KeyError if unknown, DeletedMask if deleted, MaskError if
        malformed or not its id); a fetched file is decoded once, then kept here."""
        self._refuse_deleted(mask_id)
        data = self._local_bytes(mask_id)
        if data is not None:
            mask = decode_untrusted(data)
        else:
            data = self._blob(mask_id)
            mask = decode_untrusted(data)
            self.local.add(data, mask=mask)
            self.local.touch(mask_id)
            self.bound_local(keep=mask_id)
        if mask.mask_id != mask_id:
            raise MaskError(f"file of {mask_id[:12]} does not hash to its id (disk corruption?)")
        return mask

    def referenced_blobs(self) -> set[str]:
        return set(self.ids())

    # ---- this host's cache of files -----------------------------------------------------
    def bound_local(self, keep: str | None = None) -> list[str]:
        """Evict this host's least recently used mask files until they take at most
        `local_budget_bytes`: only files the shared store holds (indexed, blob present), never
        `keep` (the one just written), the `protected` ones (served or pinned here) last.
        Returns the evicted ids."""
        if not self.local_budget_bytes:
            return []
        files = self.local.usage()  # (mask_id, bytes, last used), oldest first
        total = sum(size for _, size, _ in files)
        if total <= self.local_budget_bytes:
            return []
        try:
            protected = self.protected()
        except Exception as e:  # a view that cannot answer protects nothing extra, fails nothing
            log.warning("masks served here unknown while bounding the cache: %s", e)
            protected = set()
        order = ([f for f in files if f[0] not in protected] + [f for f in files if f[0] in protected])
        evicted = []
        for mask_id, size, _ in order:
            if total <= self.local_budget_bytes:
                break
            if mask_id == keep or not self._safely_shared(mask_id):
                continue
            self.drop_local(mask_id)
            total -= size
            evicted.append(mask_id)
        if evicted:
            log.info("%d mask files evicted from this host's cache (kept in the shared store); "
                     "%d bytes left of %d", len(evicted), total, self.local_budget_bytes)
        if total > self.local_budget_bytes:
            log.warning("this host's mask files take %d bytes, over SLT_MASK_DISK_BYTES=%d: the rest "
                        "exist only here or are in use", total, self.local_budget_bytes)
        return evicted

    def _safely_shared(self, mask_id: str) -> bool:
        """Whether the shared store holds the mask (index entry and blob), so this host's copy
        can be fetched again; any doubt (a store error) keeps the file."""
        try:
            return mask_id in self and self.blobs.exists(mask_id)
        except Exception as e:  # noqa: BLE001 (Redis or S3: keep the file, decide next time)
            log.warning("mask %s kept on this host: the shared store cannot confirm it (%s)",
                        mask_id[:12], describe(e))
            return False
