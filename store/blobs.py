"""Content-addressed bytes in the shared store: mask files, checkpoint and dataset chunks,
feature statistics. Redis by default; an S3-compatible bucket when `SLT_S3_BUCKET` is set.

A blob's key is the sha256 of its bytes, so any host can fetch one by id and check it. Large
artifacts go in chunks (`put_chunked`): a manifest lists the chunks' ids, the whole file's
sha256 and size, and a reader verifies each chunk and then the whole.

Every `put` marks the blob with the time it was last put, an existing blob too (content
addressing makes a second writer of the same bytes find the blob there): the collector
(store/gc.py) never deletes a blob put within its grace, so deduplication cannot hand a writer
a blob that is about to go. Each store also keeps the claims of the deployments that collect
in it (`claims`, `put_claim`; see store/gc.py), beside the blobs but never among them.

Reads tell the store's own faults apart: a missing or corrupt blob is None (BlobError for a
chunked file), a transient fault (store.faults.transient) raises StoreUnavailable, chained,
so the caller retries instead of taking the data for lost.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import redis

from store.faults import StoreUnavailable, describe, transient
from trainer.atomic_write import atomic_open
from trainer.digest import sha256_bytes

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # one Redis value stays small enough to never stall the server
REDIS_PREFIX = "slt:blob:"
LEGACY_MASK_PREFIX = "slt:maskblob:"  # where mask files lived before (still read)
REDIS_MARKS = "slt:blobstore:marks"  # blob id -> when it was last put (not under slt:blob:*)
REDIS_CLAIMS = "slt:blobstore:deployments"  # deployment id -> its claim (JSON)
S3_CLAIMS = "_deployments/"  # under the prefix: <prefix>_deployments/<id>.json
BLOB_ID = re.compile(r"^[0-9a-f]{64}$")  # anything else under a prefix is not a blob of ours


class BlobError(Exception):
    """A blob or chunked file is missing or does not hash to its id."""


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, blob_id: str) -> bytes | None: ...
    def delete(self, blob_id: str) -> None: ...
    def exists(self, blob_id: str) -> bool: ...
    def ids(self) -> Iterator[str]: ...
    def marks(self) -> Iterator[tuple[str, float]]: ...
    def mark(self, blob_id: str) -> float | None: ...
    def delete_if_unput_since(self, blob_id: str, since: float) -> bool: ...
    def claims(self) -> dict[str, dict]: ...
    def put_claim(self, deployment: str, claim: dict) -> None: ...


@contextmanager
def unavailable_if_transient(what: str) -> Iterator[None]:
    """Re-raise a transient store fault met inside as StoreUnavailable (chained); anything
    else passes unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as e:
        if transient(e):
            raise StoreUnavailable(f"{what}: {describe(e)}") from e
        raise


# KEYS: blob, legacy blob, marks. ARGV: blob id, since. Deletes the blob unless its mark is
# after `since`; 1 if it existed and was deleted.
_DELETE_IF_UNPUT = """
local mark = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if mark > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1], KEYS[2]) > 0 and 1 or 0
"""


class RedisBlobs:
    """Blobs as Redis strings `slt:blob:<sha256>`; their marks in one hash."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time):
        self.r, self.clock = client, clock  # clock: the time a put marks (tests move it)
        self._delete_if = client.register_script(_DELETE_IF_UNPUT)

    def put(self, data: bytes) -> str:
        blob_id = sha256_bytes(data)
        with self.r.pipeline() as p:  # one transaction: a blob never exists unmarked
            p.set(REDIS_PREFIX + blob_id, data, nx=True)
            p.hset(REDIS_MARKS, blob_id, self.clock())
            p.execute()
        return blob_id

    def get(self, blob_id: str) -> bytes | None:
        with unavailable_if_transient(f"blob {blob_id[:12]}"):
            data = self.r.get(REDIS_PREFIX + blob_id)
            if data is None:
                data = self.r.get(LEGACY_MASK_PREFIX + blob_id)
        if data is None or sha256_bytes(data) != blob_id:
            return None
        return data

    def delete(self, blob_id: str) -> None:
        with self.r.pipeline() as p:
            p.delete(REDIS_PREFIX + blob_id, LEGACY_MASK_PREFIX + blob_id)
            p.hdel(REDIS_MARKS, blob_id)
            p.execute()

    def exists(self, blob_id: str) -> bool:
        return bool(self.r.exists(REDIS_PREFIX + blob_id, LEGACY_MASK_PREFIX + blob_id))

    def ids(self) -> Iterator[str]:
        for blob_id, _ in self.marks():
            yield blob_id

    def marks(self) -> Iterator[tuple[str, float]]:
        """Every blob with the time it was last put (0: never marked, a blob from before)."""
        marked = {k.decode(): float(v) for k, v in self.r.hgetall(REDIS_MARKS).items()}
        seen: set[str] = set()
        for prefix in (REDIS_PREFIX, LEGACY_MASK_PREFIX):
            for key in self.r.scan_iter(match=prefix + "*", count=500):
                blob_id = key.decode()[len(prefix):]
                if BLOB_ID.match(blob_id) and blob_id not in seen:
                    seen.add(blob_id)
                    yield blob_id, marked.get(blob_id, 0.0)

    def mark(self, blob_id: str) -> float | None:
        if not self.exists(blob_id):
            return None
        raw = self.r.hget(REDIS_MARKS, blob_id)
        return float(raw) if raw else 0.0

    def delete_if_unput_since(self, blob_id: str, since: float) -> bool:
        """Delete the blob unless it was put after `since` (one script: a put cannot slip in
        between the check and the delete); whether it was deleted."""
        return bool(self._delete_if(keys=[REDIS_PREFIX + blob_id, LEGACY_MASK_PREFIX + blob_id,
                                          REDIS_MARKS], args=[blob_id, since]))

    def claims(self) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(REDIS_CLAIMS).items()}

    def put_claim(self, deployment: str, claim: dict) -> None:
        self.r.hset(REDIS_CLAIMS, deployment, json.dumps(claim))


def _s3_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


class S3Blobs:
    """Blobs as objects `<prefix><sha256>` in an S3-compatible bucket (boto3); an object's
    LastModified is its mark (a re-put copies the object onto itself to refresh it)."""

    def __init__(self, bucket: str, prefix: str = "slt/blobs/", endpoint_url: str | None = None,
                 client=None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        # botocore retries a 5xx or a dropped connection itself (3 more attempts, backoff);
        # what is still failing after them reaches the caller as StoreUnavailable
        self.s3 = client or boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}))

    def put(self, data: bytes) -> str:
        blob_id = sha256_bytes(data)
        key = self.prefix + blob_id
        if self.exists(blob_id):
            # refresh the mark; server-side, no bytes travel
            self.s3.copy_object(Bucket=self.bucket, Key=key, MetadataDirective="REPLACE",
                                CopySource={"Bucket": self.bucket, "Key": key},
                                Metadata={"put-at": f"{time.time():.3f}"})
        else:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return blob_id

    def get(self, blob_id: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with unavailable_if_transient(f"blob {blob_id[:12]}"):
            try:
                data = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + blob_id)["Body"].read()
            except ClientError as e:
                if _s3_code(e) in ("NoSuchKey", "404"):
                    return None
                raise
        return data if sha256_bytes(data) == blob_id else None

    def delete(self, blob_id: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + blob_id)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        with unavailable_if_transient(f"object {key}"):
            try:
                return self.s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if _s3_code(e) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def exists(self, blob_id: str) -> bool:
        return self._head(self.prefix + blob_id) is not None

    def ids(self) -> Iterator[str]:
        for blob_id, _ in self.marks():
            yield blob_id

    def marks(self) -> Iterator[tuple[str, float]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                blob_id = obj["Key"][len(self.prefix):]
                if BLOB_ID.match(blob_id):
                    yield blob_id, obj["LastModified"].timestamp()

    def mark(self, blob_id: str) -> float | None:
        head = self._head(self.prefix + blob_id)
        return None if head is None else head["LastModified"].timestamp()

    def delete_if_unput_since(self, blob_id: str, since: float) -> bool:
        """Delete the object unless it was put after `since`. S3 has no conditional delete:
        a put between this HEAD and the DELETE (milliseconds) is not seen."""
        mark = self.mark(blob_id)
        if mark is None or mark > since:
            return False
        self.delete(blob_id)
        return True

    def claims(self) -> dict[str, dict]:
        out = {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + S3_CLAIMS)
        for page in pages:
            for obj in page.get("Contents", []):
                body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                try:
                    claim = json.loads(body)
                    out[str(claim["deployment"])] = claim
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable deployment claim %s in the bucket", obj["Key"])
        return out

    def put_claim(self, deployment: str, claim: dict) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}{S3_CLAIMS}{deployment}.json",
                           Body=json.dumps({**claim, "deployment": deployment}).encode())


def blob_store(settings, client: redis.Redis) -> BlobStore:
    """The bucket of `SLT_S3_BUCKET` (at `SLT_S3_ENDPOINT_URL`, credentials the usual AWS way),
    else Redis: the embedded default."""
    if getattr(settings, "s3_bucket", None):
        return S3Blobs(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url)
    return RedisBlobs(client)


# ---- chunked files ---------------------------------------------------------------------------

def put_chunked(blobs: BlobStore, src: BinaryIO, max_bytes: int | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Store a stream as content-addressed chunks; returns the manifest
    `{"sha256", "bytes", "chunks": [ids]}`. ValueError past `max_bytes`.

    A failure deletes nothing: a chunk put so far may be one that another manifest (the same
    archive uploaded before, or being uploaded now) names, and no writer can tell which of them
    it created without racing the others. Chunks nothing names are the collector's, after its
    grace (store/gc.py)."""
    whole, size, chunks = hashlib.sha256(), 0, []
    while block := src.read(chunk_bytes):
        size += len(block)
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"larger than the shared store's cap of {max_bytes} bytes")
        whole.update(block)
        chunks.append(blobs.put(block))
    return {"sha256": whole.hexdigest(), "bytes": size, "chunks": chunks}


def get_chunked(blobs: BlobStore, manifest: dict, dest: Path) -> Path:
    """Write a chunked file to `dest` atomically, each chunk and the whole verified;
    BlobError if a chunk is missing or anything does not hash to its id."""
    whole = hashlib.sha256()
    with atomic_open(dest) as f:  # an error anywhere leaves nothing at dest
        for blob_id in manifest["chunks"]:
            block = blobs.get(blob_id)
            if block is None:
                raise BlobError(f"chunk {blob_id[:12]} of {manifest['sha256'][:12]} is missing "
                                "from the shared store")
            whole.update(block)
            f.write(block)
        if whole.hexdigest() != manifest["sha256"]:
            raise BlobError(f"file {manifest['sha256'][:12]} does not hash to its id")
    return dest


def delete_unshared_chunks(blobs: BlobStore, chunks: Iterable[str], named_elsewhere: set[str],
                           put_before: float) -> int:
    """Delete the chunks of a manifest just replaced or dropped that no other manifest names
    (`named_elsewhere`) and that nobody put again after `put_before` (the replaced manifest's
    time: a later put is another writer deduplicating onto the chunk); the rest are left to the
    collector. Returns how many were deleted."""
    n = 0
    for blob_id in set(chunks) - named_elsewhere:
        try:
            n += blobs.delete_if_unput_since(blob_id, put_before)
        except Exception as e:  # an orphan is collected later; never fail the caller for it
            log.warning("could not delete blob %s: %s", blob_id[:12], e)
    return n
