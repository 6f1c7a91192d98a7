"""ImageDataset: keyed raw images -> 64x64 RGB, with a stable split, a cached content hash and threaded batches."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from trainer.atomic_write import atomic_open

log = logging.getLogger(__name__)

SIZE = 64
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "heldout", "all")
MAX_LOGGED = 50  # unreadable files named one by one in the log; the rest only counted


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file or folder."""


def to_rgb64(im: Image.Image, crop: int | None = None) -> np.ndarray:
    """Any PIL image -> [64,64,3] uint8 RGB: alpha over white, center square crop (at most `crop`), LANCZOS resize."""
    if im.format in ("JPEG", "MPO", "WEBP", "TIFF"):
        im = ImageOps.exif_transpose(im)  # phone photos carry their rotation in EXIF
    if im.mode.startswith("I;16"):  # 16-bit grayscale PNGs: keep the high byte, RGB conversion would clip
        im = Image.fromarray((np.asarray(im, np.uint16) >> 8).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h, crop or w, crop or h)
    left, top = (w - s) // 2, (h - s) // 2
    if (left, top, s, s) != (0, 0, w, h):
        im = im.crop((left, top, left + s, top + s))
    if im.size != (SIZE, SIZE):
        # LANCZOS: the antialiased downscale (big photos -> 64) that keeps the most detail.
        im = im.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


def to_tensor(u8: np.ndarray) -> torch.Tensor:
    """[...,64,64,3] uint8 -> [...,3,64,64] float32 in [-1,1], as (u8/127.5)-1."""
    t = torch.from_numpy(np.ascontiguousarray(u8)).movedim(-1, -3).float()
    return (t / 127.5 - 1.0).contiguous()


def key_heldout(key: str) -> bool:
    """The generic split: a key is held out iff sha256(key) mod 10 == 0 (10%, stable as images are added)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10 == 0


class ImageDataset:
    """Images under `root` addressed by sorted relative keys; subclasses say how to list, read and decode them.

    Split: "heldout" holds the images whose key hashes to 0 mod 10 (see `key_heldout`), or the
    dataset's official test part where it has one (CIFAR-10 test batch, CelebA partition 2);
    "train" the rest; "all" both. Unreadable images are skipped, counted in `skipped`, logged once.
    """

    format = "folder"
    crop: int | None = None  # center-crop side before resizing; None: the largest square
    pipeline = "sq-lanczos64-v1"  # bump when decoding changes: keys the cached real moments
    split_rule = "hash10"  # how `heldout` was chosen (hash10 | official)

    def __init__(self, root: Path, name: str, keys: list[str], cache_dir: Path | None = None,
                 heldout: np.ndarray | None = None, bad: dict[int, str] | None = None):
        self.root, self.name, self.keys = Path(root), name, keys
        self._cache_dir = cache_dir
        self._heldout = heldout if heldout is not None else np.array([key_heldout(k) for k in keys], bool)
        self._bad: dict[int, str] = {}
        self._lock = threading.Lock()
        self._sha: str | None = None
        if not keys:
            raise DatasetError(f"no images in {self.root}")
        for i, why in (bad or {}).items():
            self._mark_bad(i, why)
        self._probe()

    # --- subclass hooks -------------------------------------------------------------------
    def _read(self, i: int) -> bytes:
        """Raw stored bytes of image i (what dataset_sha256 hashes)."""
        raise NotImplementedError

    def _decode(self, raw: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return to_rgb64(im, self.crop)

    def _fingerprint(self) -> list:
        """(file, size, mtime_ns) of every file the images come from: keys the dataset_sha256 cache."""
        raise NotImplementedError

    def _where(self, i: int) -> str:
        return str(self.root / self.keys[i])

    # --- public API -----------------------------------------------------------------------
    @property
    def preprocessing(self) -> str:
        """Image pipeline and split rule, e.g. "sq-lanczos64-v1-hash10": what the train-split moments depend on."""
        return f"{self.pipeline}-{self.split_rule}"

    @property
    def skipped(self) -> int:
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.keys) - len(self._bad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, format={self.format!r}, n={len(self)}, skipped={self.skipped})"

    def indices(self, split: str = "train") -> list[int]:
        """Indices of the usable images of a split ("train" | "heldout" | "all"), in key order."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        sel = np.ones(len(self.keys), bool) if split == "all" else self._heldout == (split == "heldout")
        return [int(i) for i in np.flatnonzero(sel) if int(i) not in self._bad]

    def load_uint8(self, i: int) -> np.ndarray:
        """Image i as [64,64,3] uint8 RGB; DatasetError naming the file if it cannot be decoded."""
        if i in self._bad:
            raise DatasetError(f"unreadable image {self._where(i)}: {self._bad[i]}")
        try:
            out = self._decode(self._read(i))
        except Exception as e:  # PIL raises many types for bad bytes; all mean "skip this file"
            self._mark_bad(i, f"{type(e).__name__}: {e}")
            raise DatasetError(f"unreadable image {self._where(i)}: {e}") from None
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
        return out

    def load(self, i: int) -> torch.Tensor:
        """Image i as [3,64,64] float32 in [-1,1]."""
        return to_tensor(self.load_uint8(i))

    def batches(self, batch_size: int, split: str = "train", seed: int | None = None,
                drop_last: bool = False, workers: int | None = None) -> Iterator[torch.Tensor]:
        """One pass over a split as [B,3,64,64] batches; seed=None keeps key order, else shuffles with it.

        Decoding runs in a small thread pool a few batches ahead; bad images are skipped, never raised.
        """
        order = self.indices(split)
        if not order:
            raise DatasetError(f"split {split!r} of {self.root} has no images")
        if seed is not None:
            order = [order[j] for j in np.random.default_rng(seed).permutation(len(order))]
        workers = workers or min(4, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"data-{self.name}")
        pending: deque = deque()
        todo, ahead = iter(order), max(2 * batch_size, 4 * workers)
        buf: list[np.ndarray] = []
        yielded = 0
        try:
            for i in todo:
                pending.append(pool.submit(self._try_load, i))
                if len(pending) >= ahead:
                    break
            while pending:
                arr = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._try_load, nxt))
                if arr is None:
                    continue
                buf.append(arr)
                if len(buf) == batch_size:
                    yield to_tensor(np.stack(buf))
                    yielded, buf = yielded + 1, []
            if buf and not drop_last:
                yield to_tensor(np.stack(buf))
                yielded, buf = yielded + 1, []
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if yielded == 0 and not buf and not self.indices(split):
            raise DatasetError(f"no readable images in split {split!r} of {self.root} ({self.skipped} unreadable)")

    def verify(self, workers: int | None = None) -> int:
        """Decode every image once (with progress) so `skipped` is exact; returns the usable count."""
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(self._try_load, range(len(self.keys))), total=len(self.keys),
                          desc=f"verify {self.name}", unit="img", leave=False):
                pass
        if len(self) == 0:
            raise DatasetError(f"no readable images in {self.root}: all {len(self.keys)} failed to decode")
        return len(self)

    @property
    def dataset_sha256(self) -> str:
        """sha256 over (key, raw bytes) of every image in sorted key order; cached on disk by file stats."""
        if self._sha is not None:
            return self._sha
        fp = hashlib.sha256(json.dumps([self.format, str(self.root), self._fingerprint()]).encode()).hexdigest()
        cache = self._cache_file()
        try:
            entry = json.loads(cache.read_text())
            if entry.get("fingerprint") == fp:
                self._sha = entry["dataset_sha256"]
                return self._sha
        except (OSError, ValueError, KeyError):
            pass
        h = hashlib.sha256()
        for i in tqdm(range(len(self.keys)), desc=f"hash {self.name}", unit="img", leave=False,
                      disable=len(self.keys) < 5000):
            try:
                raw, key = self._read(i), self.keys[i].encode()
            except Exception as e:  # the files changed under us (deleted, corrupt zip member)
                raise DatasetError(f"cannot read {self._where(i)} while hashing: {e}") from None
            # length prefixes: no two different (key, bytes) sequences hash the same stream
            h.update(len(key).to_bytes(8, "big") + key + len(raw).to_bytes(8, "big"))
            h.update(raw)
        self._sha = h.hexdigest()
        try:
            with atomic_open(cache, "w") as f:
                f.write(json.dumps({"root": str(self.root), "format": self.format, "fingerprint": fp,
                                    "n": len(self.keys), "dataset_sha256": self._sha}))
        except OSError as e:  # a read-only cache only costs a recompute next time
            log.warning("could not cache dataset_sha256 in %s: %s", cache, e)
        return self._sha

    # --- internals ------------------------------------------------------------------------
    def _cache_file(self) -> Path:
        if self._cache_dir is None:
            from trainer.settings import get_settings

            self._cache_dir = get_settings().cache_dir
        tag = hashlib.sha256(f"{self.format}:{self.root}".encode()).hexdigest()[:20]
        return Path(self._cache_dir) / "datasets" / f"{self.name}-{tag}.json"

    def _try_load(self, i: int) -> np.ndarray | None:
        try:
            return self.load_uint8(i)
        except DatasetError:
            return None

    def _mark_bad(self, i: int, why: str) -> None:
        with self._lock:
            if i in self._bad:
                return
            self._bad[i] = why
            n = len(self._bad)
        if n <= MAX_LOGGED:
            log.warning("skipping unreadable image %s (%s)", self._where(i), why)
        if n == MAX_LOGGED:
            log.warning("%s: %d unreadable images so far; further ones are counted, not logged", self.root, n)

    def _probe(self) -> None:
        """Decode images in order until one works, so a dataset of only bad files fails at open."""
        for i in range(len(self.keys)):
            if i not in self._bad and self._try_load(i) is not None:
                return
        first = self._where(next(iter(self._bad))) if self._bad else str(self.root)
        raise DatasetError(f"no readable images in {self.root}: all {len(self.keys)} failed to decode "
                           f"(first: {first}: {next(iter(self._bad.values()), '?')})")
