"""Dataset uploads: a multipart body streamed to disk under a size cap, its archive unpacked
with every entry checked, the result validated as a dataset, then renamed into place.

Archives are untrusted. An entry may not leave its folder (no absolute paths, no `..`), may
not be a link or a device, and unpacking stops as soon as the entry count or the bytes
actually written pass their limits (declared sizes are not believed), so a zip bomb costs
at most the limit. Archive modes are ignored: files are plain 0644 files. Any failure is an
`UploadError` with an HTTP status and a message, and the caller removes the whole temporary
folder, so nothing is left behind.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from trainer.data import DatasetError, open_dataset

log = logging.getLogger(__name__)

UPLOAD_PREFIX = ".upload-"
CHUNK = 1 << 20
MAX_FIELD_BYTES = 1024
MAX_PARTS = 8
MAX_NAME_CHARS = 1024


class UploadError(Exception):
    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


@dataclass(frozen=True)
class Limits:
    upload_bytes: int  # the request body
    unpacked_bytes: int  # bytes written while unpacking
    entries: int  # archive entries, folders included


# ---- the request body ---------------------------------------------------------------------

class _FormSink:
    """python-multipart callbacks: small text fields kept in memory, the one file part
    written to `file_path`."""

    def __init__(self, file_path: Path, on_field: Callable[[str, str], None] | None):
        self.file_path, self.on_field = file_path, on_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._name: str | None = None
        self._buf = bytearray()
        self._file: IO[bytes] | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadError(422, f"too many form parts (at most {MAX_PARTS}): send `name` and `file`")
        self._headers, self._name, self._buf = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname = self._hvalue = b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise UploadError(422, "a form part has no name")
        self._name = name
        if b"filename" in opts:
            if name != "file" or self._file is not None:
                raise UploadError(422, "send exactly one file, in the form field `file`")
            self.filename = opts[b"filename"].decode("utf-8", "replace")
            self._file = open(self.file_path, "xb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None and self._name == "file":
            self._file.write(data[start:end])
            return
        self._buf += data[start:end]
        if len(self._buf) > MAX_FIELD_BYTES:
            raise UploadError(422, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._name == "file" and self._file is not None:
            self._file.close()
            return
        value = self._buf.decode("utf-8", "replace")
        self.fields[self._name or ""] = value
        if self.on_field is not None:
            self.on_field(self._name or "", value)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


async def receive_form(request: Request, file_path: Path, max_bytes: int,
                       on_field: Callable[[str, str], None] | None = None) -> tuple[dict[str, str], bool]:
    """Stream a multipart/form-data body: text fields returned, the part `file` written to
    `file_path` (True if there was one). 413 as soon as the body passes `max_bytes`;
    `on_field(name, value)` sees each text field as it arrives and may raise UploadError,
    so a bad name fails before a large file is read."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise UploadError(415, "send multipart/form-data with the fields `name` and `file`")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, f"upload is {int(declared)} bytes; the limit is {max_bytes} (SLT_MAX_UPLOAD_BYTES)")
    sink = _FormSink(file_path, on_field)
    parser = MultipartParser(opts[b"boundary"], sink.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise UploadError(413, f"upload is larger than the limit of {max_bytes} bytes (SLT_MAX_UPLOAD_BYTES)")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as e:  # python-multipart's parse errors, a client gone mid-body
        raise UploadError(400, f"malformed multipart body: {e}") from None
    finally:
        sink.close()
    return sink.fields, sink.filename is not None


# ---- the archive --------------------------------------------------------------------------

def _relpath(name: str) -> list[str]:
    """An archive entry name as path parts inside the unpack folder; UploadError if it would
    leave it."""
    if "\x00" in name or "\\" in name:
        raise UploadError(422, f"archive entry {name!r}: backslashes and NUL are not allowed in names")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UploadError(422, f"archive entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(422, f"archive entry {name!r} points outside its folder ('..')")
    if len(name) > MAX_NAME_CHARS:
        raise UploadError(422, f"archive entry name is longer than {MAX_NAME_CHARS} characters")
    return parts


class _Unpacker:
    """Writes checked entries under `root`, counting entries and the bytes really written."""

    def __init__(self, root: Path, limits: Limits):
        self.root, self.limits = root, limits
        self.entries = self.files = self.written = 0
        root.mkdir()

    def count(self) -> None:
        self.entries += 1
        if self.entries > self.limits.entries:
            raise UploadError(413, f"archive has more than {self.limits.entries} entries (SLT_MAX_ARCHIVE_ENTRIES)")

    def mkdir(self, parts: list[str]) -> None:
        if parts:
            self._local(lambda: self.root.joinpath(*parts).mkdir(parents=True, exist_ok=True), parts)

    def file(self, parts: list[str], src: IO[bytes]) -> None:
        if not parts:
            raise UploadError(422, "archive has a file entry without a name")
        target = self.root.joinpath(*parts)
        self._local(lambda: target.parent.mkdir(parents=True, exist_ok=True), parts)
        out = self._local(lambda: open(target, "xb"), parts)  # 'x': a repeated name is an error
        with out:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                self.written += len(chunk)
                if self.written > self.limits.unpacked_bytes:
                    raise UploadError(413, f"archive unpacks to more than {self.limits.unpacked_bytes} "
                                           "bytes (SLT_MAX_UNPACKED_BYTES)")
                self._local(lambda c=chunk: out.write(c), parts)
        self.files += 1

    @staticmethod
    def _local(op: Callable, parts: list[str]):
        """Run a filesystem operation of ours; its failure is the archive's fault unless the
        disk is full."""
        try:
            return op()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UploadError(507, "no space left to unpack the archive") from None
            raise UploadError(422, f"archive entry {'/'.join(parts)!r} cannot be written: "
                                   f"{e.strerror or e} (a repeated name, or a file where a folder is?)") from None


def _unpack_zip(archive: Path, u: _Unpacker) -> None:
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        if len(infos) > u.limits.entries:  # the central directory says so before any work
            raise UploadError(413, f"archive has {len(infos)} entries; the limit is {u.limits.entries}")
        for info in infos:
            u.count()
            parts = _relpath(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadError(422, f"archive entry {info.filename!r} is a symbolic link; links are not allowed")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UploadError(422, f"archive entry {info.filename!r} is a device or other special file")
            if info.flag_bits & 0x1:
                raise UploadError(422, f"archive entry {info.filename!r} is encrypted")
            if info.is_dir():
                u.mkdir(parts)
                continue
            with z.open(info) as src:
                u.file(parts, src)


def _unpack_tar(archive: Path, u: _Unpacker) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:  # streamed: a huge member list is never held at once
            u.count()
            parts = _relpath(m.name)
            if m.issym() or m.islnk():
                raise UploadError(422, f"archive entry {m.name!r} is a link; links are not allowed")
            if m.isdir():
                u.mkdir(parts)
            elif m.isreg():
                src = tar.extractfile(m)
                assert src is not None
                with src:
                    u.file(parts, src)
            else:
                raise UploadError(422, f"archive entry {m.name!r} is a device, fifo or other special file")


def unpack_archive(archive: Path, root: Path, limits: Limits) -> int:
    """Unpack a .zip or .tar(.gz|.bz2|.xz) into the new folder `root`; returns the file count."""
    u = _Unpacker(root, limits)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, u)
        elif _is_tar(archive):
            _unpack_tar(archive, u)
        else:
            raise UploadError(422, "not a .zip or .tar(.gz) archive, or a truncated one")
    except UploadError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
            NotImplementedError) as e:
        raise UploadError(422, f"the archive is truncated or corrupt: {e}") from None
    if u.files == 0:
        raise UploadError(422, "the archive holds no files")
    return u.files


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError):
        return False


# ---- the dataset --------------------------------------------------------------------------

def validate_dataset(root: Path, name: str) -> dict:
    """Open what was unpacked as a dataset and decode every image once."""
    try:
        ds = open_dataset(root)
        ds.verify()
    except DatasetError as e:
        raise UploadError(422, f"not a usable dataset: {str(e).replace(str(root), name)}") from None
    return {"name": name, "format": ds.format, "images": len(ds), "skipped": ds.skipped}


def install(root: Path, datasets_dir: Path, name: str) -> None:
    """Move the validated folder to datasets/<name>; 409 if that name was taken meanwhile."""
    lock = os.open(datasets_dir, os.O_RDONLY)  # the same lock the demo installer takes
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = datasets_dir / name
        if os.path.lexists(target):
            raise UploadError(409, f"dataset {name!r} already exists")
        os.rename(root, target)
    finally:
        os.close(lock)


def install_upload(archive: Path, work: Path, datasets_dir: Path, name: str, limits: Limits) -> dict:
    """Unpack, validate and install an uploaded archive as dataset `name`."""
    root = work / "root"
    t0 = time.monotonic()
    unpack_archive(archive, root, limits)
    info = validate_dataset(root, name)
    install(root, datasets_dir, name)
    log.info("dataset %s installed from an upload: %d images (%d unreadable skipped), %s, %.1f s",
             name, info["images"], info["skipped"], info["format"], time.monotonic() - t0)
    return info


def clean_stale_uploads(datasets_dir: Path, older_than_s: float = 6 * 3600) -> None:
    """Remove what an API process that died mid-upload left behind."""
    now = time.time()
    for p in datasets_dir.glob(UPLOAD_PREFIX + "*"):
        try:
            if now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
