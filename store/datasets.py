"""Uploaded datasets in the shared store, so a worker on any host can search them.

The API host that installed an upload publishes the dataset folder as one zip (members in
sorted order, stored, fixed timestamps: the same folder always gives the same bytes) in
content-addressed chunks, with a manifest `slt:dataset:<name>` (`{"name", "sha256",
"bytes", "chunks", "images", "format", "created"}`), capped at SLT_SHARED_DATASET_MAX_BYTES.
A host without the dataset fetches it once, verifies it, and unpacks it under
`$SLT_HOME/cache/shared-datasets/<sha256>/`, so its format, keys and dataset_sha256 are those
of the original folder.

Two uploads of one archive share every chunk, so nothing here deletes chunks: a failed publish
leaves what it put to the collector (store/gc.py), which keeps whatever a manifest names. A
missing or corrupt chunk on fetch is a BlobError; a transient store fault StoreUnavailable.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath

import redis

from store.blobs import BlobStore, get_chunked, put_chunked, unavailable_if_transient

log = logging.getLogger(__name__)

NAMES = "slt:datasets"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _key(name: str) -> str:
    return f"slt:dataset:{name}"


def pack_folder(folder: Path, dest: Path) -> None:
    """The folder's files as a deterministic zip (links and special files left out)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with p.open("rb") as src, zf.open(info, "w") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def unpack_zip(src: Path, dest: Path) -> None:
    """Unpack a zip made by pack_folder into `dest`, refusing any member outside it."""
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            rel = PurePosixPath(info.filename)
            if rel.is_absolute() or ".." in rel.parts or info.is_dir():
                if info.is_dir():
                    continue
                raise ValueError(f"unsafe member {info.filename!r} in a shared dataset")
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as f, out.open("wb") as w:
                shutil.copyfileobj(f, w, 1 << 20)


class SharedDatasets:
    def __init__(self, client: redis.Redis, blobs: BlobStore, max_bytes: int):
        self.r, self.blobs, self.max_bytes = client, blobs, max_bytes

    def publish(self, name: str, folder: Path, info: dict | None = None) -> dict:
        """Publish an installed dataset folder; the manifest. ValueError over the size cap;
        StoreUnavailable when the store fails transiently (what was put is the collector's)."""
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=folder.parent) as tmp:
            packed = Path(tmp) / "dataset.zip"
            pack_folder(folder, packed)
            if packed.stat().st_size > self.max_bytes:
                raise ValueError(f"dataset {name!r} is larger than the shared store's cap "
                                 f"(SLT_SHARED_DATASET_MAX_BYTES={self.max_bytes})")
            with packed.open("rb") as f, unavailable_if_transient(f"dataset {name}"):
                manifest = put_chunked(self.blobs, f, self.max_bytes)
        manifest.update(name=name, created=time.time(), images=(info or {}).get("images"),
                        format=(info or {}).get("format"))
        with self.r.pipeline() as p:
            p.set(_key(name), json.dumps(manifest))
            p.sadd(NAMES, name)
            p.execute()
        log.info("dataset %s published to the shared store (%d bytes, %d chunks)", name,
                 manifest["bytes"], len(manifest["chunks"]))
        return manifest

    def get(self, name: str) -> dict | None:
        raw = self.r.get(_key(name))
        return json.loads(raw) if raw else None

    def list(self) -> list[dict]:
        names = sorted(n.decode() for n in self.r.smembers(NAMES))
        with self.r.pipeline(transaction=False) as p:
            for n in names:
                p.get(_key(n))
            return [json.loads(raw) for raw in p.execute() if raw]

    def fetch(self, name: str, cache_dir: Path) -> Path | None:
        """This host's copy of shared dataset `name` (fetched, verified and unpacked the first
        time); None if no dataset of that name was published. BlobError if a chunk is missing
        or corrupt; StoreUnavailable when the store fails transiently (retry later)."""
        with unavailable_if_transient(f"dataset {name}"):
            manifest = self.get(name)
        if manifest is None:
            return None
        root = cache_dir / "shared-datasets"
        dest = root / manifest["sha256"]
        if dest.is_dir():
            return dest
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
        try:
            with unavailable_if_transient(f"dataset {name}"):
                get_chunked(self.blobs, manifest, work / "dataset.zip")
            unpack_zip(work / "dataset.zip", work / "data")
            (work / "dataset.zip").unlink()
            try:
                os.replace(work / "data", dest)
            except OSError:  # another process of this host got there first
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("dataset %s fetched from the shared store into %s", name, dest)
        return dest

    def referenced(self) -> set[str]:
        return {c for m in self.list() for c in m["chunks"]}
