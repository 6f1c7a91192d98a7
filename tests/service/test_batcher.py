"""The batcher's fairness on a synthetic flood: steps shared between domains by deficit round
robin weighted by images, FIFO within a domain, nothing lost or taken twice."""
from __future__ import annotations

from collections import Counter

from service.batcher import Batcher


def steps_until(b: Batcher, done, cap: int = 32, limit: int = 1000) -> list[list]:
    steps = []
    while not done() and len(steps) < limit:
        steps.append(b.take(cap))
    return steps


def test_a_light_domain_is_served_in_the_first_step_despite_a_flood():
    b = Batcher(queue_limit=10_000, max_batch=32, window_s=0)
    flood = [b.submit("flood", None, seed=i, n=4) for i in range(200)]  # 800 images, queued first
    light = b.submit("light", None, seed=0, n=2)
    first = b.take(32)
    assert sum(c for r, _, c in first if r.mask_id == "light") == 2
    assert sum(c for _, _, c in first) == 32  # the rest of the step still goes to the flood
    # first come, first served within the flood: requests 0..7 fill its 30 images
    assert [r.seed for r, _, _ in first if r.mask_id == "flood"] == list(range(8))
    assert light and flood


def test_shares_are_equal_in_images_whatever_the_request_sizes():
    b = Batcher(queue_limit=100_000, max_batch=32, window_s=0)
    for i in range(50):
        b.submit("big", None, seed=i, n=64)  # few large requests
    for i in range(1600):
        b.submit("small", None, seed=i, n=2)  # many small ones
    for i in range(3200):
        b.submit("tiny", None, seed=i, n=1)
    taken = Counter()
    for step in (b.take(32) for _ in range(50)):
        assert sum(c for _, _, c in step) == 32
        for r, _, c in step:
            taken[r.mask_id] += c
    # 1600 images in 50 steps, split three ways: each within one step's rounding of a third
    assert all(abs(v - 1600 / 3) <= 32 for v in taken.values()), taken


def test_every_image_is_taken_exactly_once_in_order_per_request():
    b = Batcher(queue_limit=100_000, max_batch=32, window_s=0)
    sizes = {i: 1 + (7 * i) % 23 for i in range(200)}
    for i, n in sizes.items():
        b.submit(f"m{i % 5}", None, seed=i, n=n)
    seen: dict[int, list[int]] = {i: [] for i in sizes}
    steps = steps_until(b, lambda: b.depth() == 0)
    for step in steps:
        assert sum(c for _, _, c in step) <= 32
        for r, start, c in step:
            seen[r.seed].extend(range(start, start + c))
    assert seen == {i: list(range(n)) for i, n in sizes.items()}


def test_a_lone_domain_still_gets_full_steps():
    b = Batcher(queue_limit=10_000, max_batch=32, window_s=0)
    for i in range(10):
        b.submit("only", None, seed=i, n=5)
    assert [sum(c for _, _, c in s) for s in steps_until(b, lambda: b.depth() == 0)] == [32, 18]
