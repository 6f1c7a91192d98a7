"""Many distinct masks from one: each variant's bits are the template's, every layer rolled by
its own offset, so each file holds its own bits (its own coded streams to decode, its own
bits_sha256), keeps exactly the template's count per layer, and costs an encode, not a search.
The benchmarks use them wherever a figure must not be one file under many names."""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import torch

from trainer.masks import decode_mask, encode_mask


def variants(template: bytes, count: int, start: int = 0, domain: str = "bench-") -> Iterator[bytes]:
    """Files start..start+count-1: variant i rolls every layer's bits by i + 1 (distinct for
    every i below the largest layer's size, unless a layer is periodic) and names domain+i."""
    mask = decode_mask(template)
    bits = {k: v.flatten() for k, v in mask.masks().items()}
    bn = mask.bn_stats()
    for i in range(start, start + count):
        meta = {**mask.meta, "domain": f"{domain}{i}"}
        yield encode_mask({k: torch.roll(v, i + 1).view(mask.shapes[k]) for k, v in bits.items()},
                          bn, meta)


def bits_sha256(data: bytes) -> str:
    """The sha256 of a file's mask bits (from its coder metadata, no decode): equal for two
    files that hold the same bits under different names."""
    (hlen,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + hlen])["__metadata__"]
    return json.loads(meta["coder"])["bits_sha256"]
