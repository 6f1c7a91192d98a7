"""The mask file: round trip, size, refusal of corrupt or foreign files, and the catalog."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load

from trainer.generator import BaseSpec, base_sha256, build_base
from trainer.masks import (
    FORMAT,
    ForeignMaskError,
    MaskCatalog,
    MaskError,
    check_base,
    decode_mask,
    encode_mask,
    pack_bits,
    unpack_bits,
)
from trainer.search import SearchConfig, config_from, random_mask
from trainer.ticket import build_ticket, generate

SPEC = BaseSpec(width=0.125)


@pytest.fixture(scope="module")
def small_mask() -> bytes:
    return random_mask(SPEC, SearchConfig(k=0.1, seed=1, bn_batches=2), "d" * 64, "test")


def test_pack_unpack_matches_numpy():
    rng = np.random.default_rng(0)
    for shape in [(13,), (3, 5, 7), (8,), (1,)]:
        m = torch.from_numpy(rng.random(shape) < 0.3)
        packed = pack_bits(m)
        np.testing.assert_array_equal(packed, np.packbits(m.numpy().reshape(-1)))
        assert torch.equal(unpack_bits(torch.from_numpy(packed), shape), m)


def test_round_trip(small_mask):
    mf = decode_mask(small_mask)
    assert mf.meta["format"] == FORMAT and mf.meta["domain"] == "test"
    g = build_base(SPEC)
    assert mf.base_sha256 == base_sha256(g)
    masks = mf.masks()
    assert set(masks) == {n for n, _ in g.named_parameters() if ".bn" not in n and not n.startswith("bn_")}
    for n, m in masks.items():
        assert m.shape == dict(g.named_parameters())[n].shape and m.dtype == torch.bool
    # a reference safetensors reader opens it and sees the packed bytes and fp16 BN stats
    raw = st_load(small_mask)
    assert raw["blocks.0.conv1.weight"].dtype == np.uint8
    assert raw["blocks.0.bn1.running_var"].dtype == np.float16
    info = mf.info()
    assert info["k"] == 0.1 and info["pruning"] == "random"
    assert info["kept_fraction"] == pytest.approx(0.1, abs=0.01)
    # re-encoding the same content gives the same bytes, hence the same mask_id
    again = encode_mask(masks, mf.bn_stats(), {k: v for k, v in mf.meta.items() if k != "shapes"})
    assert again == small_mask


def test_full_size_mask_costs_at_most_1_05_bits_per_weight():
    data = random_mask(BaseSpec(), SearchConfig(k=0.1, seed=0, bn_batches=1), "0" * 64)
    mf = decode_mask(data)
    assert mf.n_weights() > 11_700_000
    assert 8 * len(data) / mf.n_weights() <= 1.05


def _tamper_meta(data: bytes, **changes) -> bytes:
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    header["__metadata__"].update(changes)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data[8 + hlen:]


def _tamper_tensor(data: bytes, name: str, **changes) -> bytes:
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    header[name].update(changes)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data[8 + hlen:]


W = "blocks.0.conv1.weight"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: _tamper_tensor(d, W, shape=[-2, -2]), "non-negative integers"),
    (lambda d: _tamper_tensor(d, W, shape="ab"), "non-negative integers"),
    (lambda d: _tamper_tensor(d, W, shape=[4.0]), "non-negative integers"),
    (lambda d: _tamper_tensor(d, W, data_offsets=["0", "8"]), "non-negative integers"),
    (lambda d: _tamper_tensor(d, W, data_offsets=[0]), "malformed"),
    (lambda d: _tamper_meta(d, shapes='{"blocks.0.conv1.weight": "ab"}'), "shapes"),
    (lambda d: _tamper_meta(d, shapes='[1, 2]'), "shapes"),
    (lambda d: _tamper_meta(d, k=3), "strings"),
    (lambda d: d[:100], "out of bounds|truncated"),
    (lambda d: d[:-5], "truncated|out of bounds"),
    (lambda d: d + b"xx", "trailing"),
    (lambda d: b"\x00" * 3, "too short"),
    (lambda d: struct.pack("<Q", 10) + b"not json!!" + d[18:], "not JSON"),
    (lambda d: _tamper_meta(d, format="slt-mask/3"), "unsupported mask format"),
    (lambda d: _tamper_meta(d, shapes="{}"), "disagree|no shape"),
])
def test_corrupt_files_are_refused_with_a_reason(small_mask, mutate, message):
    with pytest.raises(MaskError, match=message):
        decode_mask(mutate(small_mask))


def _drop(data: bytes, name: str) -> bytes:
    """The mask re-encoded without tensor `name` (a well-formed but incomplete file)."""
    mf = decode_mask(data)
    masks = {k: v for k, v in mf.masks().items() if k != name}
    bn = {k: v for k, v in mf.bn_stats().items() if k != name}
    return encode_mask(masks, bn, {k: v for k, v in mf.meta.items() if k != "shapes"})


@pytest.mark.parametrize("name,message", [
    ("blocks.1.conv2.weight", "lacks 1 of the base's parameters"),
    ("output.bias", "lacks 1 of the base's parameters"),
    ("blocks.0.bn1.running_var", "BatchNorm statistics do not fit"),
])
def test_incomplete_masks_are_refused(small_mask, name, message):
    """A layer missing from the file would silently run dense: refuse it."""
    with pytest.raises(MaskError, match=message):
        build_ticket(decode_mask(_drop(small_mask, name)))


def test_foreign_base_is_refused(small_mask):
    mf = decode_mask(small_mask)
    other = base_sha256(build_base(BaseSpec(width=0.125, seed=5)))
    with pytest.raises(ForeignMaskError, match="searched on base"):
        check_base(mf, other)
    forged = decode_mask(_tamper_meta(small_mask, base_sha256="ab" * 32))
    with pytest.raises(ForeignMaskError):
        build_ticket(forged)


def test_catalog_is_content_addressed_and_atomic(tmp_path, small_mask):
    cat = MaskCatalog(tmp_path)
    mid = cat.add(small_mask)
    assert mid == decode_mask(small_mask).mask_id and mid in cat
    assert cat.add(small_mask) == mid  # idempotent
    assert cat.bytes(mid) == small_mask
    assert [i["mask_id"] for i in cat.list()] == [mid]
    cat.record_metrics(mid, {"fid": 12.5})
    cat.record_metrics(mid, {"kid": 0.1})
    assert cat.info(mid)["evaluation"] == {"fid": 12.5, "kid": 0.1}
    assert cat.bytes(mid) == small_mask  # the addressed file never changes
    with pytest.raises(MaskError):
        cat.add(small_mask[:-1])
    with pytest.raises(MaskError, match="not a mask id"):
        cat.path("../../etc/passwd")
    assert sorted(os.listdir(tmp_path)) == sorted([f"{mid}.safetensors", f"{mid}.metrics.json"])
    # a file corrupted on disk is detected on read
    p = cat.path(mid)
    p.write_bytes(small_mask[:-8] + b"\x00" * 8)
    with pytest.raises(MaskError):
        cat.read(mid)
    # a foreign-base add is refused and leaves nothing
    cat2 = MaskCatalog(tmp_path / "b")
    with pytest.raises(ForeignMaskError):
        cat2.add(small_mask, base_sha="0" * 64)
    assert list((tmp_path / "b").iterdir()) == []


def test_killed_writer_leaves_no_mask(tmp_path, small_mask):
    """A writer killed mid-write leaves at most a temp file that list() ignores and clean_temp removes."""
    script = f"""
import os, sys, time
sys.path.insert(0, {os.getcwd()!r})
import trainer.masks as m
import trainer.atomic_write as aw
real_fdopen = os.fdopen
class Slow:
    def __init__(self, f): self.f = f
    def fileno(self): return self.f.fileno()
    def write(self, d): self.f.write(d[:10]); self.f.flush(); print('writing', flush=True); time.sleep(60)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
aw.os.fdopen = lambda fd, mode: Slow(real_fdopen(fd, mode))
m.MaskCatalog({str(tmp_path)!r}).add(open({str(tmp_path / 'src')!r}, 'rb').read())
"""
    (tmp_path / "src").write_bytes(small_mask)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    cat = MaskCatalog(tmp_path)
    assert cat.list() == [] and cat.ids() == []
    assert cat.clean_temp(older_than_s=0) == 1


def test_generation_uses_stored_bn_and_is_batch_independent(small_mask):
    g = build_ticket(decode_mask(small_mask))
    a = generate(g, seed=3, n=6, batch_size=6)
    b = generate(g, seed=3, n=2, start=4, batch_size=1)
    np.testing.assert_array_equal(a[4:6], b)
    assert a.std() > 1  # not a constant image


def test_with_metrics_keeps_bits_and_statistics_and_merges_metrics():
    from trainer.masks import with_metrics

    data = random_mask(BaseSpec(width=0.0625), config_from("demo"), "0" * 64)
    out = with_metrics(with_metrics(data, {"kid": 0.1}), {"fid": 50.0})
    a, b = decode_mask(data), decode_mask(out)
    assert b.info()["metrics"] == {"kid": 0.1, "fid": 50.0}
    assert all(np.array_equal(a.packed[k], b.packed[k]) for k in a.packed) and a.packed.keys() == b.packed.keys()
    assert all(np.array_equal(a.bn[k], b.bn[k]) for k in a.bn) and a.bn.keys() == b.bn.keys()
    assert {k: v for k, v in a.meta.items() if k != "metrics"} == {k: v for k, v in b.meta.items() if k != "metrics"}
