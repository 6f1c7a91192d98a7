"""What the benchmarks feed the service: many domains with their own mask bits (not one file
under many names), and a many-domain stream that touches at least half of them."""
from __future__ import annotations

import numpy as np

from bench.domains import request_stream
from bench.mask_variants import bits_sha256, variants
from trainer.generator import BaseSpec
from trainer.masks import decode_mask
from trainer.search import SearchConfig, random_mask


def test_variants_hold_distinct_bits_at_the_same_kept_counts() -> None:
    template = random_mask(BaseSpec(width=0.0625), SearchConfig(k=0.1, seed=0, bn_batches=1), "0" * 64)
    files = list(variants(template, 4, domain="d"))
    t = decode_mask(template)
    masks = [decode_mask(f) for f in files]
    assert len({bits_sha256(f) for f in [template, *files]}) == 5  # every file its own bits
    assert len({m.mask_id for m in masks}) == 4
    for i, m in enumerate(masks):
        assert m.meta["domain"] == f"d{i}" and m.base_sha256 == t.base_sha256
        for name, packed in t.packed.items():
            assert int(np.unpackbits(m.packed[name]).sum()) == int(np.unpackbits(packed).sum())
        assert any(not np.array_equal(m.packed[k], t.packed[k]) for k in t.packed)
        assert all(np.array_equal(m.bn[k], t.bn[k]) for k in t.bn)


def test_stream_touches_at_least_half_of_the_registered_domains() -> None:
    for n, zipf_over, count in ((1000, 1000, 300), (10_000, 1000, 2000), (7, 3, 2)):
        stream = request_stream(n, zipf_over, count)
        assert len(stream) == (n + 1) // 2 + count
        assert len(set(stream)) >= n / 2
        assert all(0 <= i < n for i in stream)
    head = request_stream(1000, 100, 3000)
    assert sum(i < 100 for i in head) > 3000 * 0.8  # the Zipf head stays hot
