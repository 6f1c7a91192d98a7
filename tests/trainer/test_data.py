"""trainer.data: every format on fixtures made here from real emoji PNGs, equivalences, bad data, split, hash."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import time
import zipfile
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import DatasetError, ImageDataset, key_heldout, open_dataset, to_rgb64
from trainer.data.cifar import BATCHES
from trainer.data.demo import MANIFEST, install_demo_dataset

N = 36


@pytest.fixture(scope="module")
def emoji_pngs(emoji_google_dir: Path) -> list[Path]:
    """N real RGBA emoji PNGs, spread over the whole set."""
    files = sorted(emoji_google_dir.glob("*.png"))
    return files[:: len(files) // N][:N]


@pytest.fixture
def folder(tmp_path: Path, emoji_pngs: list[Path]) -> Path:
    d = tmp_path / "flat"
    d.mkdir()
    for f in emoji_pngs:
        shutil.copy(f, d / f.name)
    return d


def _composite(path: Path) -> np.ndarray:
    """Reference: the RGBA PNG over white, computed independently of the loader."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64)
    a = rgba[..., 3:] / 255
    return rgba[..., :3] * a + 255 * (1 - a)


def _all(ds: ImageDataset, split: str = "all") -> torch.Tensor:
    return torch.stack([ds.load(i) for i in ds.indices(split)])


def test_folder(folder: Path, emoji_pngs: list[Path], tmp_path: Path):
    ds = open_dataset(folder, cache_dir=tmp_path / "cache")
    assert (ds.format, ds.name, len(ds), ds.skipped) == ("folder", "flat", N, 0)
    u8 = ds.load_uint8(0)
    assert u8.shape == (64, 64, 3) and u8.dtype == np.uint8
    ref = _composite(folder / ds.keys[0])
    assert np.abs(u8.astype(float) - ref).max() <= 1  # alpha over white, rounding aside
    x = ds.load(0)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(u8).permute(2, 0, 1).float() / 127.5 - 1)
    assert x.min() >= -1 and x.max() == 1  # emoji corners are transparent -> white


def _nested(src: Path, dst: Path) -> Path:
    """FFHQ-like layout (thousands folders), plus files that must be ignored."""
    for j, f in enumerate(sorted(src.glob("*.png"))):
        sub = dst / f"{(j // 10) * 1000:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f"{j:05d}.png")
    (dst / "LICENSE.txt").write_text("not an image")
    (dst / ".hidden").mkdir()
    shutil.copy(next(src.glob("*.png")), dst / ".hidden" / "x.png")
    (dst / "00000" / "._00000.png").write_bytes(b"macOS resource fork")
    return dst


def test_nested_folder_and_zip_equal(folder: Path, tmp_path: Path):
    nested = _nested(folder, tmp_path / "ffhq")
    ds = open_dataset(nested, cache_dir=tmp_path / "cache")
    assert ds.format == "folder" and len(ds) == N and ds.skipped == 0
    assert ds.keys[0] == "00000/00000.png" and ds.keys[-1] == f"{(N - 1) // 10 * 1000:05d}/{N - 1:05d}.png"
    assert torch.equal(_all(ds), _all(open_dataset(folder, cache_dir=tmp_path / "cache")))

    zpath = tmp_path / "ffhq.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for root, _, files in os.walk(nested):
            for f in files:
                p = Path(root) / f
                zf.write(p, p.relative_to(nested).as_posix())
    zs = open_dataset(zpath, cache_dir=tmp_path / "cache")
    assert (zs.format, zs.name, zs.keys) == ("zip", "ffhq", ds.keys)
    assert torch.equal(_all(zs), _all(ds))
    assert zs.indices("heldout") == ds.indices("heldout")
    assert zs.dataset_sha256 == ds.dataset_sha256  # same keys, same bytes
    assert torch.equal(torch.cat(list(zs.batches(8, seed=3))), torch.cat(list(ds.batches(8, seed=3))))


def test_celeba_center_crop(emoji_pngs: list[Path], tmp_path: Path):
    img_dir = tmp_path / "celeba" / "img_align_celeba"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    crops = []
    for j, f in enumerate(emoji_pngs[:12]):
        canvas = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)  # CelebA's aligned size, noisy border
        face = np.asarray(Image.fromarray(_composite(f).round().astype(np.uint8)).resize((160, 160)))
        canvas[29:189, 9:169] = face  # exactly the centered 160x160 window
        crops.append(face)
        Image.fromarray(canvas).save(img_dir / f"{j + 1:06d}.png")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{j + 1:06d}.png {2 if j % 4 == 0 else 0}\n" for j in range(12)))
    for path in (tmp_path / "celeba", img_dir):
        ds = open_dataset(path, cache_dir=tmp_path / "cache")
        assert ds.format == "celeba" and len(ds) == 12
        for i in range(12):
            assert np.array_equal(ds.load_uint8(i), to_rgb64(Image.fromarray(crops[i])))
        assert ds.indices("heldout") == [0, 4, 8]  # the official test partition
        assert ds.preprocessing == "c160-lanczos64-v1-official"


def test_lsun_lmdb_webp(emoji_pngs: list[Path], tmp_path: Path):
    db = tmp_path / "bedroom_train_lmdb"
    expect = {}
    with lmdb.open(str(db), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for j, f in enumerate(emoji_pngs[:16]):
            im = Image.fromarray(_composite(f).round().astype(np.uint8)).resize((96, 72))  # not square
            buf = io.BytesIO()
            im.save(buf, "WEBP", lossless=True) if j % 4 else im.save(buf, "JPEG", quality=95)
            key = f"{j * 7919:040x}"
            txn.put(key.encode(), buf.getvalue())
            expect[key] = to_rgb64(Image.open(io.BytesIO(buf.getvalue())))
    for path in (db, db / "data.mdb", tmp_path):  # the lmdb folder, its data file, a folder holding it
        ds = open_dataset(path, cache_dir=tmp_path / "cache")
        assert ds.format == "lsun" and len(ds) == 16 and ds.keys == sorted(expect)
        for i, k in enumerate(ds.keys):
            assert np.array_equal(ds.load_uint8(i), expect[k])
    # center crop: 96x72 -> the middle 72x72, so the left/rightmost 12 columns never matter
    wide = np.zeros((72, 96, 3), np.uint8)
    wide[:, 12:84] = 200
    assert (to_rgb64(Image.fromarray(wide)) == 200).all()


def _write_cifar(root: Path, rows: np.ndarray, per: int) -> tuple[Path, Path]:
    """The same [6*per,32,32,3] images as cifar-10-batches-bin and cifar-10-batches-py."""
    binp, pyp = root / "bin" / "cifar-10-batches-bin", root / "py" / "cifar-10-batches-py"
    binp.mkdir(parents=True)
    pyp.mkdir(parents=True)
    flat = rows.transpose(0, 3, 1, 2).reshape(len(rows), 3072)  # R plane, G plane, B plane
    for b, name in enumerate(BATCHES):
        part, labels = flat[b * per:(b + 1) * per], [(b + r) % 10 for r in range(per)]
        rec = np.concatenate([np.array(labels, np.uint8)[:, None], part], axis=1)
        (binp / f"{name}.bin").write_bytes(rec.tobytes())
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": part.copy(),
             b"filenames": [f"{name}_{r}.png".encode() for r in range(per)]}
        (pyp / name).write_bytes(pickle.dumps(d, protocol=4))
    (binp / "batches.meta.txt").write_text("airplane\n")
    return binp.parent, pyp.parent


@pytest.fixture
def cifar(emoji_pngs: list[Path], tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rows = np.stack([np.asarray(Image.fromarray(to_rgb64(Image.open(f))).resize((32, 32))) for f in emoji_pngs])
    return (*_write_cifar(tmp_path, rows, N // 6), rows)


def test_cifar_bin_equals_py(cifar, tmp_path: Path):
    binroot, pyroot, rows = cifar
    b = open_dataset(binroot, cache_dir=tmp_path / "cache")
    p = open_dataset(pyroot / "cifar-10-batches-py", cache_dir=tmp_path / "cache")
    assert (b.format, p.format, len(b), len(p)) == ("cifar10-bin", "cifar10-py", N, N)
    assert b.keys == p.keys and b.keys[0] == "data_batch_1/00000"
    assert torch.equal(_all(b), _all(p))
    assert b.dataset_sha256 == p.dataset_sha256 and b.preprocessing == p.preprocessing == "bicubic64-v1-official"
    assert b.indices("heldout") == p.indices("heldout") == list(range(N - N // 6, N))  # test_batch
    # 32x32 upsampled bicubic, pixel order (row-major, RGB) preserved
    assert np.array_equal(b.load_uint8(7), np.asarray(Image.fromarray(rows[7]).resize((64, 64), Image.BICUBIC)))


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as CIFAR-10's own Python 2 cPickle files are: protocol 2, py2 str opcodes, numpy.core globals."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R(K\x01K"
           + bytes([len(data)]) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb")
    lab = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + lab + b"u."


def test_cifar_py2_pickles(cifar, tmp_path: Path):
    binroot, pyroot, rows = cifar
    flat = rows.transpose(0, 3, 1, 2).reshape(len(rows), 3072)
    per = N // 6
    for b, name in enumerate(BATCHES):
        (pyroot / "cifar-10-batches-py" / name).write_bytes(_py2_pickle(flat[b * per:(b + 1) * per], [1] * per))
    p = open_dataset(pyroot, cache_dir=tmp_path / "cache")
    assert torch.equal(_all(p), _all(open_dataset(binroot, cache_dir=tmp_path / "cache")))


class _Evil:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvilEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {self.marker}')",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_cifar_malicious_pickle_is_inert(cifar, tmp_path: Path, payload: str):
    _, pyroot, _ = cifar
    marker = tmp_path / "pwned"
    evil = {"system": _Evil(f"touch {marker}"), "eval": _EvilEval(marker),
            "nested": {b"data": np.zeros((2, 3072), np.uint8), b"labels": [_Evil(f"touch {marker}")]}}[payload]
    target = pyroot / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_2"):
        open_dataset(pyroot, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_missing_empty_and_imageless(tmp_path: Path):
    with pytest.raises(DatasetError, match="not found.*nope"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty folder.*empty"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "sub" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images.*docs"):
        open_dataset(tmp_path / "docs")
    with zipfile.ZipFile(tmp_path / "nothing.zip", "w") as zf:
        zf.writestr("readme.md", "no images here")
    with pytest.raises(DatasetError, match="no images.*nothing.zip"):
        open_dataset(tmp_path / "nothing.zip")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a dataset.*notes.txt"):
        open_dataset(tmp_path / "notes.txt")


def test_bad_images_skipped_and_counted(folder: Path, tmp_path: Path, caplog):
    victim = sorted(folder.glob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-stream: header parses, pixels do not
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = open_dataset(folder, cache_dir=tmp_path / "cache")
    assert ds.skipped == 1  # the empty file is known at open time
    got = torch.cat(list(ds.batches(8, split="all", seed=1)))  # never raises for a bad file
    assert got.shape == (N - 1, 3, 64, 64) and ds.skipped == 3 and len(ds) == N - 1
    assert victim.name in caplog.text and "garbage.jpg" in caplog.text
    bad = ds.keys.index(victim.name)
    assert bad not in ds.indices("all")
    with pytest.raises(DatasetError, match=victim.name):
        ds.load(bad)


def test_all_bad_is_an_error(tmp_path: Path):
    d = tmp_path / "bad"
    d.mkdir()
    for j in range(5):
        (d / f"{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DatasetError, match=r"no readable images.*bad.*all 5"):
        open_dataset(d, cache_dir=tmp_path / "cache")


def test_split_stable_and_disjoint(folder: Path, emoji_google_dir: Path, tmp_path: Path):
    ds = open_dataset(folder, cache_dir=tmp_path / "cache")
    tr, ho = ds.indices("train"), ds.indices("heldout")
    assert set(tr).isdisjoint(ho) and sorted(tr + ho) == ds.indices("all") == list(range(N))
    assert [ds.keys[i] for i in ho] == [k for k in ds.keys if key_heldout(k)]
    held = {ds.keys[i] for i in ho}
    for f in sorted(emoji_google_dir.glob("*.png"))[1:40:3]:  # adding images keeps every old assignment
        shutil.copy(f, folder / f"new-{f.name}")
    ds2 = open_dataset(folder, cache_dir=tmp_path / "cache")
    assert {k for k in (ds2.keys[i] for i in ds2.indices("heldout")) if not k.startswith("new-")} == held
    frac = np.mean([key_heldout(f"{j:05d}/{j:05d}.png") for j in range(20000)])
    assert 0.09 < frac < 0.11


def test_batches_order_and_shapes(folder: Path, tmp_path: Path):
    ds = open_dataset(folder, cache_dir=tmp_path / "cache")
    n = len(ds.indices("train"))
    plain = list(ds.batches(5, seed=None))
    assert [len(b) for b in plain] == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert torch.equal(torch.cat(plain), _all(ds, "train"))  # seed=None: key order
    assert all(len(b) == 5 for b in ds.batches(5, drop_last=True))
    a, b, c = (torch.cat(list(ds.batches(7, seed=s))) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(map(bytes, a.numpy())) == sorted(map(bytes, torch.cat(plain).numpy()))  # a permutation
    it = ds.batches(4, seed=0)
    assert next(it).shape == (4, 3, 64, 64) and next(it).dtype == torch.float32
    it.close()  # abandoning a pass early leaves no hung threads


def test_dataset_sha256_cached_and_sensitive(folder: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    ds = open_dataset(folder, cache_dir=cache)
    h = ds.dataset_sha256
    assert len(h) == 64 and list((cache / "datasets").glob("flat-*.json"))
    again = open_dataset(folder, cache_dir=cache)
    monkeypatch.setattr(type(again), "_read", lambda self, i: pytest.fail("cache was not used"))
    assert again.dataset_sha256 == h
    monkeypatch.undo()
    f = folder / ds.keys[3]
    raw = bytearray(f.read_bytes())
    raw[-20] ^= 1  # one bit inside the PNG (same size), mtime moved on
    f.write_bytes(bytes(raw))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_dataset(folder, cache_dir=cache).dataset_sha256 != h


def test_default_cache_dir_is_slt_home(folder: Path, tmp_home: Path):
    ds = open_dataset(folder)
    assert ds.dataset_sha256 and list((tmp_home / "cache" / "datasets").glob("*.json"))


def test_demo_dataset_installed_and_idempotent(emoji_google_dir: Path, emoji_twitter_dir: Path, monkeypatch):
    for d in (emoji_google_dir, emoji_twitter_dir):
        m = json.loads((d / MANIFEST).read_text())
        assert m["complete"] and m["count"] == len(list(d.glob("*.png"))) > 3000
        assert m["tarball_integrity"].startswith("sha512-")
        img = Image.open(next(d.glob("*.png")))
        assert img.size == (64, 64) and img.mode == "RGBA"
    monkeypatch.setattr(shutil, "which", lambda _: None)  # a complete install never calls npm again
    t0 = time.time()
    assert install_demo_dataset("emoji-google", emoji_google_dir.parent) == emoji_google_dir
    assert time.time() - t0 < 1
    ds = open_dataset(emoji_twitter_dir)
    assert ds.format == "folder" and len(ds) == m["count"]
