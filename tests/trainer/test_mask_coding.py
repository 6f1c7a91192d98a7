"""slt-mask/2: layers entropy-coded against their kept fraction. Bit-exact round trips against
numpy's packbits of the same bits, real masks of both pruning modes, the size targets, v1 files
still read, and corrupt streams refused with a MaskError (never another exception)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from trainer.data import open_dataset
from trainer.generator import BaseSpec
from trainer.mask_coding import decode_layer, encode_layer
from trainer.masks import FORMAT_V1, FORMAT_V2, MaskError, convert, decode_mask, encode_mask
from trainer.search import config_from, search


def entropy_bits(n: int, kept: int) -> float:
    p = kept / n
    return 0.0 if kept in (0, n) else -n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 12_345, 300_001])
@pytest.mark.parametrize("frac", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_layers_round_trip_bit_exactly_near_the_entropy(n, frac):
    rng = np.random.default_rng(n)
    kept = min(n, max(0, round(frac * n)))
    bits = np.zeros(n, bool)
    bits[rng.choice(n, kept, replace=False)] = True
    packed = np.packbits(bits)  # the reference: numpy's own packing of the same bits
    stream = encode_layer(packed, n, kept)
    assert np.array_equal(decode_layer(stream, n, kept), packed)
    if n >= 1000:  # coded size within 2% + a few words of n H(p)
        assert 8 * stream.size <= 1.02 * entropy_bits(n, kept) + 96


def _search(width: float, pruning: str, dataset) -> bytes:
    cfg = config_from("demo", k=0.1, pruning=pruning, iterations=2, batch_size=2, warmup=0,
                      bn_batches=1, preview_every=0, features="random")
    return search(BaseSpec(width=width), cfg, dataset, domain="d").data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, emoji_google_dir):
    from slt_stack import copy_images

    return open_dataset(copy_images(emoji_google_dir, tmp_path_factory.mktemp("ds") / "d", n=8))


@pytest.mark.slow
@pytest.mark.parametrize("width,target", [(1.0, 0.50), (0.25, 0.55)])
@pytest.mark.parametrize("pruning", ["local", "global"])
def test_real_masks_round_trip_and_cost_under_half_a_bit(dataset, width, target, pruning):
    data = _search(width, pruning, dataset)
    v2 = decode_mask(data)
    assert v2.meta["format"] == FORMAT_V2
    v1 = decode_mask(convert(data, FORMAT_V1))
    assert set(v1.packed) == set(v2.packed)
    for name in v1.packed:  # every layer, bit for bit
        assert np.array_equal(v1.packed[name], v2.packed[name]), name
    assert v1.bn.keys() == v2.bn.keys() and all(np.array_equal(v1.bn[k], v2.bn[k]) for k in v1.bn)
    bpw = 8 * len(data) / v2.n_weights()  # all-in: header, statistics and streams
    assert bpw <= target, bpw
    assert decode_mask(convert(convert(data, FORMAT_V1), FORMAT_V2)).packed.keys() == v2.packed.keys()
    assert convert(convert(data, FORMAT_V1), FORMAT_V2) == data  # same content, same bytes, same id


@pytest.fixture(scope="module")
def small() -> bytes:
    g = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(64, 32, 3, 3, generator=g) < 0.1,
             "a.bias": torch.rand(64, generator=g) < 0.5,
             "b.weight": torch.zeros(5, 3, dtype=torch.bool),  # keeps nothing
             "b.bias": torch.ones(5, dtype=torch.bool)}  # keeps all
    meta = {k: "x" for k in ("base_arch", "base_seed", "base_sha256", "init", "k", "pruning", "domain",
                             "dataset_sha256", "features", "iterations")}
    meta.update(base_arch="{}", base_seed="0", k="0.1", iterations="0")
    return encode_mask(masks, {"bn.running_mean": torch.zeros(4)}, meta)


def test_v1_files_still_load_with_the_same_bits(small):
    old = convert(small, FORMAT_V1)
    a, b = decode_mask(old), decode_mask(small)
    assert a.meta["format"] == FORMAT_V1 and "coder" not in a.meta
    assert all(np.array_equal(a.packed[k], b.packed[k]) for k in a.packed)
    assert len(small) < len(old)


def _tensors(data: bytes) -> tuple[int, dict, bytearray]:
    (hlen,) = struct.unpack("<Q", data[:8])
    return hlen, json.loads(data[8:8 + hlen]), bytearray(data)


def test_corrupt_streams_are_a_clear_error(small):
    hlen, header, raw = _tensors(small)
    a, b = header["a.weight"]["data_offsets"]
    for pos in (a, a + 1, (a + b) // 2, b - 1):
        bad = bytearray(raw)
        bad[8 + hlen + pos] ^= 0x5A
        with pytest.raises(MaskError, match="corrupt"):
            decode_mask(bytes(bad))
    meta = header["__metadata__"]
    coder = json.loads(meta["coder"])
    for change in ({"kept": {**coder["kept"], "a.weight": coder["kept"]["a.weight"] + 1}},
                   {"kept": {**coder["kept"], "b.weight": 3}},
                   {"bits_sha256": "0" * 64}, {"name": "other"}):
        header2 = {**header, "__metadata__": {**meta, "coder": json.dumps({**coder, **change})}}
        h = json.dumps(header2, separators=(",", ":"), sort_keys=True).encode()
        h += b" " * (-len(h) % 8)
        with pytest.raises(MaskError):
            decode_mask(struct.pack("<Q", len(h)) + h + bytes(raw[8 + hlen:]))


def test_random_damage_never_escapes_as_another_exception(small):
    hlen, _, raw = _tensors(small)
    rng = np.random.default_rng(1)
    refused = 0
    for _ in range(300):
        bad = bytearray(raw)
        for pos in rng.integers(8 + hlen, len(raw), size=rng.integers(1, 4)):
            bad[pos] = rng.integers(0, 256)
        try:
            decode_mask(bytes(bad))
        except MaskError:
            refused += 1
    assert refused >= 250  # the rest changed BN bytes to other finite values, or nothing
