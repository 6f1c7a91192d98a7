"""The mask file (a domain), and the content-addressed `MaskCatalog` that holds them.

A mask file is safetensors: one uint8 tensor per masked parameter, named as the parameter,
plus the domain's BatchNorm running statistics as float16. In `slt-mask/1` each tensor holds
the mask bits packed in numpy `packbits` order (true shape in metadata); in `slt-mask/2`
(written by default) it holds those packed bits entropy-coded against the layer's kept
fraction (trainer.mask_coding), with the coder, each layer's kept count and a sha256 of the
packed bits in the metadata field `coder`. Both are read. `mask_id` is the sha256 of the
file bytes.
We serialise safetensors ourselves (sorted keys, fixed layout) so equal content gives equal
bytes and so equal ids; any safetensors reader opens the result.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.atomic_write import write_atomic
from trainer.digest import sha256_bytes
from trainer.mask_coding import CODER, CodingError, decode_layer, encode_layer

FORMAT_V1, FORMAT_V2 = "slt-mask/1", "slt-mask/2"
FORMAT = FORMAT_V2  # what encode_mask writes
FORMATS = (FORMAT_V1, FORMAT_V2)
MAX_FILE_BYTES = 64 << 20  # a width-2 base still fits; anything larger is not a mask
MAX_HEADER_BYTES = 1 << 20
MASK_ID = re.compile(r"^[0-9a-f]{64}$")
REQUIRED_META = ("format", "base_arch", "base_seed", "base_sha256", "init", "k", "pruning",
                 "domain", "dataset_sha256", "features", "iterations", "created", "metrics",
                 "shapes")
_DTYPES = {"U8": np.uint8, "F16": np.float16}


class MaskError(ValueError):
    """A mask file that is corrupt, of another format version, or for another base."""


class ForeignMaskError(MaskError):
    """A well-formed mask whose base_sha256 is not the served base's."""


@dataclass
class MaskFile:
    """A decoded mask file: packed bits per parameter, BN statistics, metadata."""

    packed: dict[str, np.ndarray]  # name -> uint8 [ceil(n/8)]
    shapes: dict[str, tuple[int, ...]]
    bn: dict[str, np.ndarray]  # 'blocks.0.bn1.running_mean' -> float16 [C]
    meta: dict[str, str]
    mask_id: str = ""
    nbytes: int = 0
    _decoded: dict = field(default_factory=dict, repr=False)

    @property
    def base_sha256(self) -> str:
        return self.meta["base_sha256"]

    def info(self) -> dict:
        """Metadata with JSON fields decoded: what `inspect` prints and the API shows."""
        out: dict = {"mask_id": self.mask_id, "bytes": self.nbytes}
        for key, val in sorted(self.meta.items()):
            if key == "shapes":
                continue
            try:
                out[key] = json.loads(val) if key in _JSON_META else val
            except json.JSONDecodeError:
                out[key] = val
        n = self.n_weights()
        kept = sum(int(np.unpackbits(p, count=math.prod(self.shapes[k])).sum())
                   for k, p in self.packed.items())
        out.update(weights=n, kept=kept, kept_fraction=kept / max(n, 1),
                   bits_per_weight=8 * self.nbytes / max(n, 1))
        return out

    def n_weights(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def masks(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Unpacked bool masks with their true shapes, unpacked on `device`."""
        return {k: unpack_bits(torch.from_numpy(p).to(device), self.shapes[k])
                for k, p in self.packed.items()}

    def bn_stats(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v.astype(np.float32)).to(device) for k, v in self.bn.items()}


_JSON_META = {"base_arch", "metrics", "search", "dense_layers", "base_seed", "k", "iterations", "objective"}


def pack_bits(mask: torch.Tensor) -> np.ndarray:
    """bool tensor -> uint8 [ceil(n/8)] in numpy packbits (big-endian bit) order."""
    return np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1))


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 [ceil(n/8)] -> bool `shape`, on packed's device (bit 7 of byte 0 is element 0)."""
    n = math.prod(shape)
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # [nbytes, 8]
    return bits.reshape(-1)[:n].bool().reshape(shape)


def _serialise(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(sorted(meta.items()))}
    offset, blobs = 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(np.uint8): "U8", np.dtype(np.float16): "F16"}[a.dtype]
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * (-len(h) % 8)  # safetensors aligns the data start to 8 bytes
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def _bits_sha256(packed: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(packed):
        h.update(name.encode() + b"\0" + packed[name].tobytes())
    return h.hexdigest()


def _serialise_mask(packed: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                    bn: dict[str, np.ndarray], meta: dict[str, str], fmt: str) -> bytes:
    """Mask-file bytes of packed bits (coded for slt-mask/2), float16 BN statistics, metadata."""
    m = {k: v for k, v in meta.items() if k != "coder"}
    m.update(format=fmt, shapes=json.dumps({k: list(v) for k, v in shapes.items()}, sort_keys=True))
    tensors: dict[str, np.ndarray] = dict(bn)
    if fmt == FORMAT_V1:
        tensors.update(packed)
    else:
        kept = {k: int(np.unpackbits(v).sum()) for k, v in packed.items()}  # padding bits are 0
        tensors.update({k: encode_layer(v, math.prod(shapes[k]), kept[k]) for k, v in packed.items()})
        m["coder"] = json.dumps({"name": CODER, "kept": kept, "bits_sha256": _bits_sha256(packed)},
                                sort_keys=True, separators=(",", ":"))
    return _serialise(tensors, m)


def encode_mask(masks: dict[str, torch.Tensor], bn: dict[str, torch.Tensor],
                meta: dict[str, object], fmt: str = FORMAT) -> bytes:
    """Serialise bool masks, BN statistics and metadata to mask-file bytes (`fmt`: slt-mask/2,
    entropy-coded, or slt-mask/1, plain packed bits)."""
    if fmt not in FORMATS:
        raise MaskError(f"unknown mask format {fmt!r}; one of {FORMATS}")
    shapes = {k: tuple(v.shape) for k, v in masks.items()}
    m = {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in meta.items()}
    m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    m.setdefault("metrics", "{}")
    missing = [k for k in REQUIRED_META if k not in m and k not in ("format", "shapes")]
    if missing:
        raise MaskError(f"mask metadata lacks {missing}")
    bn_arrays = {}
    for k, v in bn.items():
        a = v.detach().to("cpu", torch.float32).numpy()
        if not np.all(np.isfinite(a)) or np.abs(a).max(initial=0) > 65504:
            raise MaskError(f"BatchNorm statistic {k} does not fit float16 (max |x|={np.abs(a).max()})")
        bn_arrays[k] = a.astype(np.float16)
    return _serialise_mask({k: pack_bits(v) for k, v in masks.items()}, shapes, bn_arrays, m, fmt)


def convert(data: bytes, fmt: str = FORMAT) -> bytes:
    """The same mask (bits, statistics, metadata) in another file format: a new mask_id."""
    mask = decode_mask(data)
    return _serialise_mask(mask.packed, mask.shapes, mask.bn, mask.meta, fmt)


def _is_dims(v: object) -> bool:
    """A list of non-negative JSON integers (bool is not one), each below 2**40."""
    return isinstance(v, list | tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in v)


def decode_mask(data: bytes) -> MaskFile:
    """Parse and verify mask-file bytes; any defect raises MaskError naming it."""
    if len(data) > MAX_FILE_BYTES:
        raise MaskError(f"file is {len(data)} bytes; a mask file is at most {MAX_FILE_BYTES}")
    if len(data) < 8:
        raise MaskError("not a mask file: too short to be safetensors")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(data):
        raise MaskError("not a mask file: safetensors header length is out of bounds")
    try:
        header = json.loads(data[8:8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MaskError(f"not a mask file: header is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(header, dict):
        raise MaskError("not a mask file: header is not a JSON object")
    if not all(isinstance(t, dict) for k, t in header.items() if k != "__metadata__"):
        raise MaskError("not a mask file: a tensor entry is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MaskError("not a mask file: __metadata__ must map names to strings")
    fmt = meta.get("format")
    if fmt not in FORMATS:
        raise MaskError(f"unsupported mask format {fmt!r}; this build reads {' and '.join(FORMATS)}")
    coder = _coder(meta) if fmt == FORMAT_V2 else None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise MaskError(f"mask metadata lacks {missing}")
    try:
        shapes = json.loads(meta["shapes"])
        if not (isinstance(shapes, dict) and all(_is_dims(v) for v in shapes.values())):
            raise ValueError
        shapes = {k: tuple(v) for k, v in shapes.items()}
    except (json.JSONDecodeError, TypeError, ValueError):
        raise MaskError("mask metadata 'shapes' is not a JSON object of shapes "
                        "(lists of non-negative integers)") from None
    body = memoryview(data)[8 + hlen:]
    packed, bn, end = {}, {}, 0
    for name, t in header.items():
        try:
            dtype, shape, (a, b) = _DTYPES[t["dtype"]], t["shape"], t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MaskError(f"tensor {name!r}: unsupported dtype or malformed entry") from None
        if not (_is_dims(shape) and _is_dims([a, b])):
            raise MaskError(f"tensor {name!r}: shape and data_offsets must be non-negative integers")
        if not (a <= b <= len(body)) or (b - a) != math.prod(shape) * np.dtype(dtype).itemsize:
            raise MaskError(f"tensor {name!r}: data is truncated or out of bounds")
        arr = np.frombuffer(body[a:b], dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
        end = max(end, b)
        if dtype is np.uint8:
            if name not in shapes:
                raise MaskError(f"tensor {name!r} has no shape in metadata")
            n = math.prod(shapes[name])
            if coder is not None:
                arr = _decode_stream(name, arr, n, coder)
            if arr.shape != ((n + 7) // 8,):
                raise MaskError(f"tensor {name!r}: {arr.size} bytes cannot hold {n} mask bits")
            if n % 8 and int(arr[-1]) & ((1 << (8 - n % 8)) - 1):
                raise MaskError(f"tensor {name!r}: padding bits are set (corrupt file)")
            packed[name] = arr
        else:
            if not np.all(np.isfinite(arr)):
                raise MaskError(f"BatchNorm statistic {name!r} is not finite")
            bn[name] = arr
    if end != len(body):
        raise MaskError("file has trailing bytes after its tensors (corrupt or truncated)")
    if set(shapes) != set(packed):
        raise MaskError(f"metadata shapes and mask tensors disagree: {sorted(set(shapes) ^ set(packed))}")
    if coder is not None and _bits_sha256(packed) != coder["bits_sha256"]:
        raise MaskError("coded mask bits do not match their sha256 (corrupt stream)")
    return MaskFile(packed, shapes, bn, meta, sha256_bytes(data), len(data))


def _coder(meta: dict[str, str]) -> dict:
    """The `coder` metadata of an slt-mask/2 file, checked."""
    try:
        coder = json.loads(meta["coder"])
        ok = (isinstance(coder, dict) and coder.get("name") == CODER
              and isinstance(coder.get("kept"), dict) and _is_dims(list(coder["kept"].values()))
              and isinstance(coder.get("bits_sha256"), str))
    except (KeyError, json.JSONDecodeError, TypeError):
        ok = False
    if not ok:
        raise MaskError(f"slt-mask/2 metadata 'coder' must name {CODER!r} with each layer's kept "
                        "count and the bits' sha256")
    return coder


def _decode_stream(name: str, stream: np.ndarray, n: int, coder: dict) -> np.ndarray:
    kept = coder["kept"].get(name)
    if kept is None or kept > n:
        raise MaskError(f"tensor {name!r}: no valid kept count in the coder metadata")
    try:
        packed = decode_layer(stream, n, kept)
    except CodingError as e:
        raise MaskError(f"tensor {name!r}: corrupt coded stream ({e})") from None
    if _popcount(packed) != kept:
        raise MaskError(f"tensor {name!r}: coded stream does not hold {kept} kept weights (corrupt)")
    return packed


_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _popcount(packed: np.ndarray) -> int:
    """Set bits of a uint8 array: numpy's bitwise_count where it has one (2.0+; ~10x faster
    than unpacking, ~8 ms of a width-1 file's cold load otherwise), else a byte table."""
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(packed).sum(dtype=np.int64))
    return int(_BYTE_POPCOUNT[packed].sum(dtype=np.int64))


def with_metrics(data: bytes, metrics: dict) -> bytes:
    """The same mask with `metrics` merged into its metadata (a new file, so a new mask_id)."""
    mask = decode_mask(data)
    meta = dict(mask.meta)
    meta["metrics"] = json.dumps({**json.loads(meta.get("metrics") or "{}"), **metrics}, sort_keys=True)
    return _serialise_mask(mask.packed, mask.shapes, mask.bn, meta, meta["format"])


def check_base(mask: MaskFile, base_sha: str) -> None:
    """Refuse a mask searched on another base."""
    if mask.base_sha256 != base_sha:
        raise ForeignMaskError(
            f"mask was searched on base {mask.base_sha256[:12]}… ({mask.meta.get('base_arch')}, "
            f"init {mask.meta.get('init')}, seed {mask.meta.get('base_seed')}); "
            f"the served base is {base_sha[:12]}…")


def check_shapes(mask: MaskFile, model: torch.nn.Module) -> None:
    """Refuse a mask that does not cover exactly the base's conv weights and biases, each with
    its shape, and every BatchNorm's running statistics: a missing layer would run dense."""
    want = {f"{n}.{p}": tuple(getattr(m, p).shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
            for p in ("weight", "bias") if getattr(m, p) is not None}
    for name, shape in mask.shapes.items():
        if want.get(name) != shape:
            raise MaskError(f"mask parameter {name!r} {shape} does not fit the base")
    missing = sorted(set(want) - set(mask.shapes))
    if missing:
        raise MaskError(f"mask lacks {len(missing)} of the base's parameters: {missing[:3]}")
    bn = {f"{n}.{b}": (m.num_features,) for n, m in model.named_modules()
          if isinstance(m, torch.nn.BatchNorm2d) for b in ("running_mean", "running_var")}
    wrong = sorted(k for k in set(bn) | set(mask.bn) if bn.get(k) != tuple(mask.bn.get(k, np.empty(0)).shape))
    if wrong:
        raise MaskError(f"mask BatchNorm statistics do not fit the base: {wrong[:3]}")


def write_mask_file(path: str | Path, data: bytes) -> None:
    """Write mask bytes to a user-chosen path, atomically."""
    write_atomic(Path(path), data)


def read_mask_file(path: str | Path) -> MaskFile:
    p = Path(path)
    if not p.is_file():
        raise MaskError(f"no mask file at {p}")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise MaskError(f"{p} is {p.stat().st_size} bytes; a mask file is at most {MAX_FILE_BYTES}")
    return decode_mask(p.read_bytes())


class MaskCatalog:
    """Content-addressed mask files under `root` (`<mask_id>.safetensors`), with JSON sidecars
    for evaluation results so the addressed file itself never changes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, mask_id: str) -> Path:
        if not MASK_ID.match(mask_id or ""):
            raise MaskError(f"not a mask id: {mask_id!r} (64 lowercase hex digits)")
        return self.root / f"{mask_id}.safetensors"

    def __contains__(self, mask_id: str) -> bool:
        return MASK_ID.match(mask_id or "") is not None and self.path(mask_id).is_file()

    def add(self, data: bytes, base_sha: str | None = None, mask: MaskFile | None = None) -> str:
        """Verify and store mask bytes; returns the mask_id. Idempotent. `mask`: these bytes
        already decoded (and so verified) by the caller, not decoded again."""
        if mask is None or mask.mask_id != sha256_bytes(data):
            mask = decode_mask(data)
        if base_sha is not None:
            check_base(mask, base_sha)
        p = self.path(mask.mask_id)
        if not p.exists():
            write_atomic(p, data)
        return mask.mask_id

    def read(self, mask_id: str) -> MaskFile:
        p = self.path(mask_id)
        if not p.is_file():
            raise KeyError(mask_id)
        mask = read_mask_file(p)
        if mask.mask_id != mask_id:
            raise MaskError(f"catalog file {p.name} does not hash to its id (disk corruption?)")
        return mask

    def bytes(self, mask_id: str) -> bytes:
        p = self.path(mask_id)
        if not p.is_file():
            raise KeyError(mask_id)
        return p.read_bytes()

    def touch(self, mask_id: str) -> None:
        """Mark the file used now (its mtime: atime is often not kept), for LRU eviction; the
        time given in full, as a file system's own stamps may be coarser than two uses apart."""
        try:
            now = time.time_ns()
            os.utime(self.path(mask_id), ns=(now, now))
        except OSError:  # removed meanwhile, or a read-only cache: recency is only a hint
            pass

    def usage(self) -> list[tuple[str, int, float]]:
        """(mask_id, bytes, last used) of every file, least recently used first."""
        out = []
        for mask_id in self.ids():
            try:
                st = self.path(mask_id).stat()
            except OSError:
                continue
            out.append((mask_id, st.st_size, st.st_mtime))
        return sorted(out, key=lambda f: f[2])

    def remove(self, mask_id: str) -> None:
        """Delete a mask's file and its sidecar (absent ones are fine)."""
        self.path(mask_id).unlink(missing_ok=True)
        (self.root / f"{mask_id}.metrics.json").unlink(missing_ok=True)

    def record_metrics(self, mask_id: str, metrics: dict) -> None:
        """Store evaluation results beside the mask (sidecar), merged with earlier ones."""
        side = self.root / f"{mask_id}.metrics.json"
        old = json.loads(side.read_text()) if side.exists() else {}
        old.update(metrics)
        write_atomic(side, json.dumps(old, indent=1, sort_keys=True).encode())

    def metrics(self, mask_id: str) -> dict:
        side = self.root / f"{mask_id}.metrics.json"
        return json.loads(side.read_text()) if side.exists() else {}

    def info(self, mask_id: str) -> dict:
        info = self.read(mask_id).info()
        evaluated = self.metrics(mask_id)
        if evaluated:
            info["evaluation"] = evaluated
        return info

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.safetensors") if MASK_ID.match(p.stem))

    def list(self) -> list[dict]:
        """Every mask's info, newest first; unreadable files are reported, not fatal."""
        out = []
        for mask_id in self.ids():
            try:
                out.append(self.info(mask_id))
            except (MaskError, OSError, json.JSONDecodeError) as e:
                out.append({"mask_id": mask_id, "error": str(e)})
        return sorted(out, key=lambda i: i.get("created", ""), reverse=True)

    def clean_temp(self, older_than_s: float = 3600) -> int:
        """Remove temporary files left by a writer that crashed."""
        n, now = 0, time.time()
        for p in self.root.glob(".tmp-*"):
            if now - p.stat().st_mtime > older_than_s:
                p.unlink(missing_ok=True)
                n += 1
        return n
