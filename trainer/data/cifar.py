"""CIFAR-10 in both official layouts (binary records, python pickles), 32x32 upsampled bicubic to 64x64."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.base import SIZE, DatasetError, ImageDataset

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
RECORD = 3072  # 3x32x32 uint8, channel-major (R plane, G plane, B plane)


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy array reconstruction; any other global (os.system, builtins.eval...) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return self.ALLOWED[(module, name)]()


def load_cifar_pickle(path: Path) -> np.ndarray:
    """The [N,3072] uint8 image rows of one CIFAR-10 python batch, read without running code in it."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # refused globals, truncation, garbage: all the same to the user
        raise DatasetError(f"unreadable CIFAR-10 pickle {path}: {type(e).__name__}: {e}") from None
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD:
        raise DatasetError(f"not a CIFAR-10 batch: {path} (expected a dict with 'data' uint8 [N,{RECORD}])")
    return data


class CifarDataset(ImageDataset):
    """cifar-10-batches-bin or -py; key = "<batch>/<row:05d>", raw bytes = the 3072-byte image record.

    Both layouts give the same keys and bytes, hence the same dataset_sha256. Held out: test_batch.
    """

    pipeline, split_rule = "bicubic64-v1", "official"

    def __init__(self, root: Path, batch_dir: Path, binary: bool, name: str | None = None,
                 cache_dir: Path | None = None):
        root, self.batch_dir, self.binary = Path(root), Path(batch_dir), binary
        self.format = "cifar10-bin" if binary else "cifar10-py"
        self._files = [self.batch_dir / (b + ".bin" if binary else b) for b in BATCHES]
        missing = [f.name for f in self._files if not f.is_file()]
        if missing:
            raise DatasetError(f"incomplete CIFAR-10 folder {self.batch_dir}: missing {', '.join(missing)}")
        self._rows = [self._load_bin(f) if binary else load_cifar_pickle(f) for f in self._files]
        keys = [f"{b}/{r:05d}" for b, rows in zip(BATCHES, self._rows, strict=True) for r in range(len(rows))]
        heldout = np.concatenate([np.full(len(r), b == "test_batch") for b, r in zip(BATCHES, self._rows, strict=True)])
        self._offsets = np.cumsum([0] + [len(r) for r in self._rows])
        super().__init__(root, name or root.name, keys, cache_dir, heldout=heldout)

    @staticmethod
    def _load_bin(path: Path) -> np.ndarray:
        size = path.stat().st_size
        if size == 0 or size % (RECORD + 1):
            raise DatasetError(f"not a CIFAR-10 binary batch: {path} ({size} bytes, records are {RECORD + 1})")
        # memory-mapped: one label byte then the image record, per row
        return np.memmap(path, np.uint8, "r").reshape(-1, RECORD + 1)[:, 1:]

    def _read(self, i: int) -> bytes:
        b = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self._rows[b][i - self._offsets[b]].tobytes()

    def _decode(self, raw: bytes) -> np.ndarray:
        im = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0))
        # BICUBIC for the 2x upsample: sharper than bilinear, and LANCZOS rings on tiny images.
        return np.asarray(im.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.uint8).copy()

    def _where(self, i: int) -> str:
        b, r = self.keys[i].split("/")
        return f"{self.batch_dir / (b + '.bin' if self.binary else b)} row {int(r)}"

    def _fingerprint(self) -> list:
        return [[f.name, s.st_size, s.st_mtime_ns] for f, s in ((f, os.stat(f)) for f in self._files)]
