"""Image files at any depth: a folder (FFHQ's layout among them), a .zip, and CelebA's img_align_celeba."""
from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from trainer.data.base import IMAGE_EXTS, DatasetError, ImageDataset, key_heldout


def _is_image(rel: str) -> bool:
    # hidden files and folders (.DS_Store, ._x.png resource forks, .ipynb_checkpoints) are never images
    parts = rel.split("/")
    return rel.lower().endswith(IMAGE_EXTS) and not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def scan_folder(root: Path) -> tuple[list[str], dict[str, os.stat_result], int]:
    """(sorted image keys, their stats, number of other files) under root, following links without loops."""
    stats: dict[str, os.stat_result] = {}
    others, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for f in filenames:
            rel = f if rel_dir == "." else f"{rel_dir}/{f}"
            if _is_image(rel):
                try:
                    stats[rel] = os.stat(os.path.join(dirpath, f))
                except OSError:  # a dangling link: not an image we can use
                    others += 1
            else:
                others += 1
    return sorted(stats), stats, others


class FolderDataset(ImageDataset):
    """png/jpg/jpeg/webp/bmp files at any depth under a folder; key = path relative to it."""

    format = "folder"

    def __init__(self, root: Path, name: str | None = None, cache_dir: Path | None = None,
                 image_dir: Path | None = None):
        root = Path(root)
        self.image_dir = Path(image_dir or root)
        try:
            empty = not any(self.image_dir.iterdir())
        except OSError as e:
            raise DatasetError(f"unreadable folder {self.image_dir}: {e}") from None
        if empty:
            raise DatasetError(f"empty folder: {self.image_dir}")
        keys, self._stats, others = scan_folder(self.image_dir)
        if not keys:
            raise DatasetError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTS)}) in {self.image_dir} "
                               f"({others} other files)")
        bad = {i: "empty file" for i, k in enumerate(keys) if self._stats[k].st_size == 0}
        super().__init__(root, name or root.name, keys, cache_dir, heldout=self._split(keys), bad=bad)

    def _split(self, keys: list[str]) -> np.ndarray | None:
        return None

    def _read(self, i: int) -> bytes:
        return (self.image_dir / self.keys[i]).read_bytes()

    def _where(self, i: int) -> str:
        return str(self.image_dir / self.keys[i])

    def _fingerprint(self) -> list:
        return [[k, s.st_size, s.st_mtime_ns] for k, s in ((k, os.stat(self.image_dir / k)) for k in self.keys)]


class CelebADataset(FolderDataset):
    """CelebA img_align_celeba (178x218 JPEGs): center crop 160x160, then LANCZOS resize to 64x64.

    160 is the common CelebA-64 crop of GFMN-era GAN code (the face without most background; DCGAN's
    108 crop cuts the chin and hair). Held out: the official test partition (list_eval_partition,
    partition 2) when that file sits beside img_align_celeba, else the generic key hash.
    """

    format = "celeba"
    crop = 160
    pipeline = "c160-lanczos64-v1"

    def _split(self, keys: list[str]) -> np.ndarray | None:
        for cand in ("list_eval_partition.txt", "list_eval_partition.csv"):
            f = self.image_dir.parent / cand
            if f.is_file():
                part = {}
                for line in f.read_text().splitlines():
                    fields = line.replace(",", " ").split()
                    if len(fields) == 2 and fields[1].isdigit():
                        part[fields[0]] = int(fields[1])
                self.split_rule = "official"
                return np.array([part.get(k.rsplit("/", 1)[-1], 0 if not key_heldout(k) else 2) == 2
                                 for k in keys], bool)
        return None


class ZipDataset(ImageDataset):
    """Images at any depth inside a .zip; key = member name. Reads are serialised, decoding is not."""

    format = "zip"

    def __init__(self, path: Path, name: str | None = None, cache_dir: Path | None = None):
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as zf:
                infos = {i.filename: i for i in zf.infolist() if not i.is_dir() and _is_image(i.filename)}
                total = len(zf.infolist())
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(f"unreadable zip {path}: {e}") from None
        if not infos:
            raise DatasetError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTS)}) in zip {path} ({total} entries)")
        keys = sorted(infos)
        self._zf, self._pid, self._zlock = None, None, threading.Lock()
        bad = {i: "empty file" for i, k in enumerate(keys) if infos[k].file_size == 0}
        super().__init__(path, name or path.name.removesuffix(".zip"), keys, cache_dir, bad=bad)

    def _read(self, i: int) -> bytes:
        with self._zlock:
            if self._zf is None or self._pid != os.getpid():  # reopen after fork: no shared file offset
                self._zf, self._pid = zipfile.ZipFile(self.root), os.getpid()
            return self._zf.read(self.keys[i])

    def _where(self, i: int) -> str:
        return f"{self.root}:{self.keys[i]}"

    def _fingerprint(self) -> list:
        s = os.stat(self.root)
        return [[self.root.name, s.st_size, s.st_mtime_ns]]
