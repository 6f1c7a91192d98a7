"""Datasets detected by layout; every image comes out as 64x64 RGB in [-1, 1].

    ds = open_dataset("var/datasets/celeba")   # folder | zip | celeba | lsun | cifar10-bin | cifar10-py
    for x in ds.batches(64, split="train", seed=0): ...   # [64,3,64,64] float32
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from trainer.data.base import (
    IMAGE_EXTS,
    SIZE,
    DatasetError,
    ImageDataset,
    key_heldout,
    to_rgb64,
    to_tensor,
)
from trainer.data.cifar import CifarDataset
from trainer.data.folder import CelebADataset, FolderDataset, ZipDataset
from trainer.data.lsun import LsunDataset

__all__ = ["DatasetError", "ImageDataset", "open_dataset", "IMAGE_EXTS", "SIZE", "key_heldout", "to_rgb64",
           "to_tensor"]

CELEBA_DIR = "img_align_celeba"


def _cifar_dir(d: Path, kind: str) -> Path | None:
    """d itself or its child cifar-10-batches-<kind>, if it holds that layout's first batch."""
    first = "data_batch_1.bin" if kind == "bin" else "data_batch_1"
    return next((c for c in (d, d / f"cifar-10-batches-{kind}") if (c / first).is_file()), None)


def open_dataset(path: str | Path, cache_dir: Path | None = None) -> ImageDataset:
    """Open the dataset at path, its format detected by layout; DatasetError (naming the path) if unusable.

    Checked in order: a .zip file; an lmdb folder with data.mdb (LSUN), or a folder with one such child;
    cifar-10-batches-bin / -py (the folder or its parent); img_align_celeba (the folder, or a folder
    holding it, nested Kaggle copies included); otherwise a folder of images at any depth.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    p = Path(os.path.normpath(p.absolute()))  # not resolve(): a symlinked dataset keeps its link's name
    if p.is_file():
        if p.name == "data.mdb":
            return LsunDataset(p.parent, cache_dir=cache_dir)
        if zipfile.is_zipfile(p):
            return ZipDataset(p, cache_dir=cache_dir)
        raise DatasetError(f"not a dataset: {p} (expected a folder, a .zip of images or an lmdb folder)")
    if not p.is_dir():
        raise DatasetError(f"not a dataset: {p}")
    if (p / "data.mdb").is_file():
        return LsunDataset(p, cache_dir=cache_dir)
    try:
        children = sorted(c for c in p.iterdir() if c.is_dir())
    except OSError as e:
        raise DatasetError(f"unreadable folder {p}: {e}") from None
    lmdbs = [c for c in children if (c / "data.mdb").is_file()]
    if len(lmdbs) == 1:
        return LsunDataset(p, db_dir=lmdbs[0], cache_dir=cache_dir)
    for kind in ("bin", "py"):
        if d := _cifar_dir(p, kind):
            return CifarDataset(p, d, binary=kind == "bin", cache_dir=cache_dir)
    img_dir = p if p.name == CELEBA_DIR else p / CELEBA_DIR
    if img_dir.is_dir():
        while (img_dir / CELEBA_DIR).is_dir():  # the Kaggle copy nests img_align_celeba twice
            img_dir = img_dir / CELEBA_DIR
        return CelebADataset(p, image_dir=img_dir, cache_dir=cache_dir)
    return FolderDataset(p, cache_dir=cache_dir)
