"""Content-addressed bytes in the shared store: mask files, checkpoint and dataset chunks,
feature statistics. Redis by default; an S3-compatible bucket when `SLT_S3_BUCKET` is set.

A blob's key is the sha256 of its bytes, so any host can fetch one by id and check it. Large
artifacts go in chunks (`put_chunked`): a manifest lists the chunks' ids, the whole file's
sha256 and size, and a reader verifies each chunk and then the whole.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import redis

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # one Redis value stays small enough to never stall the server
REDIS_PREFIX = "slt:blob:"
LEGACY_MASK_PREFIX = "slt:maskblob:"  # where mask files lived before (still read)


class BlobError(Exception):
    """A blob or chunked file is missing or does not hash to its id."""


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, blob_id: str) -> bytes | None: ...
    def delete(self, blob_id: str) -> None: ...
    def exists(self, blob_id: str) -> bool: ...
    def ids(self) -> Iterator[str]: ...


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RedisBlobs:
    """Blobs as Redis strings `slt:blob:<sha256>`."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def put(self, data: bytes) -> str:
        blob_id = sha256(data)
        self.r.set(REDIS_PREFIX + blob_id, data, nx=True)
        return blob_id

    def get(self, blob_id: str) -> bytes | None:
        data = self.r.get(REDIS_PREFIX + blob_id)
        if data is None:
            data = self.r.get(LEGACY_MASK_PREFIX + blob_id)
        if data is None or sha256(data) != blob_id:
            return None
        return data

    def delete(self, blob_id: str) -> None:
        self.r.delete(REDIS_PREFIX + blob_id, LEGACY_MASK_PREFIX + blob_id)

    def exists(self, blob_id: str) -> bool:
        return bool(self.r.exists(REDIS_PREFIX + blob_id, LEGACY_MASK_PREFIX + blob_id))

    def ids(self) -> Iterator[str]:
        for prefix in (REDIS_PREFIX, LEGACY_MASK_PREFIX):
            for key in self.r.scan_iter(match=prefix + "*", count=500):
                yield key.decode()[len(prefix):]


class S3Blobs:
    """Blobs as objects `<prefix><sha256>` in an S3-compatible bucket (boto3)."""

    def __init__(self, bucket: str, prefix: str = "slt/blobs/", endpoint_url: str | None = None,
                 client=None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.s3 = client or boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3}))

    def put(self, data: bytes) -> str:
        blob_id = sha256(data)
        if not self.exists(blob_id):
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + blob_id, Body=data)
        return blob_id

    def get(self, blob_id: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            data = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + blob_id)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return data if sha256(data) == blob_id else None

    def delete(self, blob_id: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + blob_id)

    def exists(self, blob_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self.prefix + blob_id)
            return True
        except ClientError:
            return False

    def ids(self) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix):]


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
    `{"sha256", "bytes", "chunks": [ids]}`. ValueError past `max_bytes` (chunks written so
    far are removed)."""
    whole, size, chunks = hashlib.sha256(), 0, []
    try:
        while block := src.read(chunk_bytes):
            size += len(block)
            if max_bytes is not None and size > max_bytes:
                raise ValueError(f"larger than the shared store's cap of {max_bytes} bytes")
            whole.update(block)
            chunks.append(blobs.put(block))
    except BaseException:
        delete_chunks(blobs, chunks)
        raise
    return {"sha256": whole.hexdigest(), "bytes": size, "chunks": chunks}


def get_chunked(blobs: BlobStore, manifest: dict, dest: Path) -> Path:
    """Write a chunked file to `dest` atomically, each chunk and the whole verified;
    BlobError if a chunk is missing or anything does not hash to its id."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    whole = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for blob_id in manifest["chunks"]:
                block = blobs.get(blob_id)
                if block is None:
                    raise BlobError(f"chunk {blob_id[:12]} of {manifest['sha256'][:12]} is missing "
                                    "from the shared store")
                whole.update(block)
                f.write(block)
        if whole.hexdigest() != manifest["sha256"]:
            raise BlobError(f"file {manifest['sha256'][:12]} does not hash to its id")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def delete_chunks(blobs: BlobStore, chunks: Iterable[str]) -> None:
    for blob_id in chunks:
        try:
            blobs.delete(blob_id)
        except Exception as e:  # an orphan is collected later; never fail the caller for it
            log.warning("could not delete blob %s: %s", blob_id[:12], e)
