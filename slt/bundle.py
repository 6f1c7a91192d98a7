"""Mask bundles: a folder with the mask file and its model card (README.md), as `slt export`
writes it. `check` holds the card against the file before an import: the file's sha256 must be
the card's mask id, and the base and dataset the file's own metadata names must be the card's."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"
MAX_HEADER_BYTES = 1 << 20  # a mask file's safetensors header is a few KB


class BundleError(Exception):
    """A bundle whose card and file disagree, or that is not a bundle."""


def file_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (an 8-byte little-endian header length, then
    the JSON header), read without the trainer: the client imports no part of the service."""
    if len(data) < 8:
        raise BundleError("the mask file is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise BundleError("the mask file is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        raise BundleError("the mask file is not a safetensors file (header is not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise BundleError("the mask file carries no metadata: not a mask")
    return meta


def front_matter(card: str) -> dict[str, Any]:
    """The YAML between the card's leading `---` lines."""
    lines = card.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (s.strip() for s in lines[1:]):
        raise BundleError(f"{CARD} has no YAML front matter")
    end = next(i for i, s in enumerate(lines[1:], 1) if s.strip() == "---")
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        raise BundleError(f"{CARD}'s front matter is not YAML: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("slt"), dict):
        raise BundleError(f"{CARD}'s front matter has no `slt` block (not a mask bundle)")
    return meta


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b)


def check(folder: Path) -> tuple[Path, bytes, dict]:
    """(the mask file, its bytes, the card's `slt` block) once card and file agree; BundleError
    naming the first disagreement otherwise."""
    card_path = folder / CARD
    if not card_path.is_file():
        raise BundleError(f"no {CARD} in {folder}: not a bundle (slt export writes one)")
    slt = front_matter(card_path.read_text(encoding="utf-8"))["slt"]
    name = slt.get("file")
    if not isinstance(name, str) or Path(name).name != name or not name:
        raise BundleError(f"{CARD} names no mask file (`slt.file`)")
    path = folder / name
    if not path.is_file():
        raise BundleError(f"{CARD} names {name}, which is not in {folder}")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != slt.get("sha256") or sha != slt.get("mask_id"):
        raise BundleError(f"{name} does not match its card: its sha256 is {sha}, the card says mask "
                          f"{slt.get('mask_id')} (sha256 {slt.get('sha256')})")
    meta = file_metadata(data)
    base = slt.get("base") or {}
    arch = json.loads(meta.get("base_arch") or "{}")
    checks = [("base sha256", meta.get("base_sha256"), base.get("sha256")),
              ("base seed", meta.get("base_seed"), base.get("seed")),
              ("base init", meta.get("init"), base.get("init")),
              ("base arch", arch.get("arch"), base.get("arch")),
              ("base width", arch.get("width"), base.get("width")),
              ("dataset sha256", meta.get("dataset_sha256"), (slt.get("dataset") or {}).get("sha256"))]
    for what, in_file, in_card in checks:
        if not _same(in_file, in_card):
            raise BundleError(f"{name} does not match its card: {what} is {in_file} in the file, "
                              f"{in_card} in {CARD}")
    return path, data, slt
