"""The engine itself (real Redis, tiny base): batch independence, LRU by bytes with pinning,
grouping by domain, mask fetch from Redis, saturation."""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import numpy as np
import pytest
import torch
from live_server import make_mask, reference, settings_for

from service.errors import Saturated, UnknownDomain, UnknownMask
from service.state import AppState
from trainer.generator import latents
from trainer.masks import ForeignMaskError, MaskError


def mid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Running:
    """An AppState (and so an Engine) started on an event loop in a thread of its own."""

    def __init__(self, settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.state = AppState(settings)
        self.run(self.state.start())
        deadline = time.monotonic() + 60  # the readiness probe's images must not crowd the tests
        while not self.engine.ready and time.monotonic() < deadline:
            time.sleep(0.01)

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def engine(self):
        return self.state.engine

    def close(self):
        self.run(self.state.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def masks() -> list[bytes]:
    return [make_mask(k, seed) for k, seed in ((0.5, 11), (0.2, 12), (0.8, 13))]


@pytest.fixture
def running(tmp_path, redis_url):
    made = []

    def start(**overrides):
        r = Running(settings_for(tmp_path / f"home{len(made)}", redis_url, **overrides))
        made.append(r)
        return r

    yield start
    for r in made:
        r.close()


def _add(state: AppState, data: bytes, domain: str | None = None) -> str:
    state.engine.import_mask(data)
    if domain:
        state.engine.mirror.apply(state.domains.promote(domain, mid(data)))
    return mid(data)


def test_lanes_run_passes_on_one_thread_each(tmp_path, redis_url):
    before = torch.get_num_threads()
    r = Running(settings_for(tmp_path, redis_url, torch_threads=3))
    assert r.engine.lanes == 3 and r.engine.intra_op_threads == {1}
    assert sorted(t.name for t in threading.enumerate() if t.name.startswith("slt-infer")) == [
        "slt-infer-0", "slt-infer-1", "slt-infer-2", "slt-infer-express"]  # the light requests' lane
    r.close()
    r = Running(settings_for(tmp_path / "plain", redis_url, torch_threads=2, express_lane=False))
    assert sorted(t.name for t in threading.enumerate() if t.name.startswith("slt-infer")) == [
        "slt-infer-0", "slt-infer-1"]
    r.close()
    assert torch.get_num_threads() == before  # the caller's own count untouched


def test_image_never_depends_on_its_batch(running, masks):
    """A request of 1 image, alone or with others of any mask in one step, gives the same pixels."""
    r = running(batch_window_ms=0)
    e = r.engine
    ids = [_add(r.state, m) for m in masks]
    alone = e.submit(ids[0], 42, 1).result(60)  # a batch of 1, padded to 2
    with e.hold():
        futs = [e.submit(ids[1], 7, 3), e.submit(ids[0], 42, 1), e.submit(ids[2], 9, 2),
                e.submit(ids[0], 5, 4)]
    mixed = [f.result(60) for f in futs]
    assert np.array_equal(alone, mixed[1]) and np.array_equal(alone, reference(masks[0], 42, 1))
    for (m, seed, n), got in zip([(1, 7, 3), (0, 42, 1), (2, 9, 2), (0, 5, 4)], mixed):
        assert np.array_equal(got, reference(masks[m], seed, n)), (m, seed, n)
    # and straight through the forward pass: row i of any batch equals its batch-of-1 result
    w = e._weights(ids[0], set())
    z = latents(3, 0, 5, e.spec.nz)
    full = e._forward(w, z)
    for i in range(5):
        assert torch.equal(e._forward(w, z[i:i + 1])[0], full[i])


def test_steps_group_requests_by_mask(running, masks):
    r = running(max_batch=8)
    e = r.engine
    e.batcher.one_mask_steps = False  # the GPU's steps, shared between masks, run on the CPU
    a, b = (_add(r.state, m) for m in masks[:2])
    with e.hold():
        futs = [e.submit(m, s, 2) for s, m in enumerate([a, b, a, b, a, b])]
        chunks = e.batcher.take(8)
        # the step is shared between the two masks (4 images each), oldest requests first
        assert [(c[0].mask_id, c[0].seed) for c in chunks] == [(a, 0), (a, 2), (b, 1), (b, 3)]
        assert e.queue_depth() == 4
        e._step(chunks)  # run that step here while the loop is held; the loop does the rest
    for f in futs:
        assert f.result(60).shape == (2, 64, 64, 3)


def test_on_a_cpu_each_step_is_one_pass_of_the_next_mask_in_turn(running, masks):
    r = running(max_batch=32, step_slice_images=4)
    e = r.engine
    ids = [_add(r.state, m) for m in masks[:3]]
    data = dict(zip(ids, masks[:3]))
    with e.hold():
        futs = {(m, s): e.submit(m, s, 6) for s in range(2) for m in ids}  # 12 images a mask
        steps = [e.batcher.take(e.batcher.max_batch) for _ in range(9)]
    # one mask a step, at most one pass (4 images), the masks in turn: a b c a b c a b c
    assert [{c[0].mask_id for c in st} for st in steps] == [{m} for m in ids * 3]
    assert all(sum(c for _, _, c in st) == 4 for st in steps) and e.queue_depth() == 0
    for st in steps:
        e._step(st)
    for (m, s), f in futs.items():
        assert np.array_equal(f.result(60), reference(data[m], s, 6))


def test_a_step_yields_to_a_newly_waiting_domain_after_one_pass(running, masks):
    r = running(max_batch=32, step_slice_images=8)
    e = r.engine
    e.batcher.one_mask_steps = False  # the GPU's steps, shared between masks, run on the CPU
    a, b = (_add(r.state, m) for m in masks[:2])
    data = dict(zip((a, b), masks[:2]))
    with e.hold():
        flood = [e.submit(a, s, 8) for s in range(4)]  # 32 images of a: one full step
        chunks = e.batcher.take(32)
        assert sum(c for _, _, c in chunks) == 32 and e.queue_depth() == 0
        light = e.submit(b, 99, 2)  # arrives while that step runs
        e._step(chunks)
        # one pass of 8 ran; the other 24 images went back to the queue, beside b's request
        assert flood[0].done() and not any(f.done() for f in flood[1:]) and not light.done()
        assert e.queue_depth() == 24 + 2
        nxt = e.batcher.take(32)
        assert (b, 99) in {(c[0].mask_id, c[0].seed) for c in nxt}
        e.batcher.give_back(nxt)
    # every image is still the reference's, whatever passes it was made in
    assert np.array_equal(light.result(60), reference(data[b], 99, 2))
    for s, f in enumerate(flood):
        assert np.array_equal(f.result(60), reference(data[a], s, 8))


def test_lru_by_bytes_never_evicts_pinned(running, masks):
    probe = running()
    one = sum(t.numel() * t.element_size() for t in
              probe.engine.build_weights(probe.engine.load_mask(_add(probe.state, masks[0]))).values())
    r = running(device_cache_bytes=int(2.5 * one))
    e = r.engine
    a = _add(r.state, masks[0], "pin-a")
    b = _add(r.state, masks[1], "lru-b")
    c = _add(r.state, masks[2], "lru-c")
    e.mirror.apply(r.state.domains.set_pinned("pin-a", True))
    data = dict(zip((a, b, c), masks))
    for m in (a, b, c, b, c):  # b and c are rebuilt into the buffers of evicted entries
        assert np.array_equal(e.submit(m, 0, 2).result(60), reference(data[m], 0, 2))
    assert set(e._cache.keys()) == {a, c}  # b fell out (LRU), a stayed (pinned), all in budget
    assert e.metrics.cache_evictions._value.get() == 3
    assert e._cache.bytes <= 2.5 * one
    misses = e.metrics.cache_misses._value.get()
    e.submit(c, 1, 2).result(60)
    assert e.metrics.cache_misses._value.get() == misses  # warm: no rebuild
    e.mirror.apply(r.state.domains.set_pinned("pin-a", False))


def _wait_for(cond, timeout: float = 30.0) -> bool:
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    return cond()


def test_a_cold_build_writes_into_a_spare_made_ready_while_idle(running, masks):
    from trainer.generator import prunable_names

    fresh = [make_mask(0.3, 31), make_mask(0.6, 32)]  # no domain has them: the probe cannot build them
    r = running()
    e = r.engine
    assert _wait_for(lambda: e._spare is not None)  # made by an idle lane after the start
    spare = e._spare
    assert set(spare) == set(prunable_names(e.base))  # one domain's masked weights, no more
    ptrs = {name: t.data_ptr() for name, t in spare.items()}
    a = _add(r.state, fresh[0], "spare-a")
    # the buffers held zeros (or another mask's weights): the pixels are still the reference's
    assert np.array_equal(e.submit(a, 0, 2).result(60), reference(fresh[0], 0, 2))
    built = e._cache.get(a)
    assert {name: built[name].data_ptr() for name in ptrs} == ptrs  # written into the spare
    assert _wait_for(lambda: e._spare is not None and e._spare is not spare)  # and another made
    b = _add(r.state, fresh[1], "spare-b")
    assert np.array_equal(e.submit(b, 1, 2).result(60), reference(fresh[1], 1, 2))


def test_mask_only_in_the_shared_store_is_fetched_verified_and_cached(running, masks):
    writer = running()
    data = make_mask(0.4, 21)
    writer.state.catalog.publish(data)  # as a worker on another host publishes it
    writer.state.domains.promote("fetched", mid(data))
    r = running()  # a fresh replica
    r.engine.forget_mask(mid(data))  # with nothing of it (its readiness probe may have used it)
    assert mid(data) not in r.state.catalog.local and mid(data) in r.state.catalog
    gen = r.run(r.engine.generate("fetched", 3, 2))
    assert gen.mask_id == mid(data) and np.array_equal(gen.images, reference(data, 3, 2))
    assert mid(data) in r.state.catalog.local  # cached on this host's disk
    with pytest.raises(UnknownDomain):
        r.run(r.engine.generate("never-promoted", 0, 1))
    with pytest.raises(UnknownMask):
        r.engine.load_mask("0" * 64)
    foreign = make_mask(0.4, 21, base="width=0.0625,seed=3")
    r.state.catalog.blobs.put(foreign)
    with pytest.raises(ForeignMaskError):
        r.engine.load_mask(mid(foreign))
    assert mid(foreign) not in r.state.catalog.local


def test_mask_with_wrong_bn_statistics_is_refused(running, masks):
    from trainer.masks import decode_mask

    r = running()
    bad = decode_mask(masks[0])
    bad.bn.pop(next(iter(bad.bn)))
    with pytest.raises(MaskError, match="BatchNorm"):
        r.engine.verify(bad)


def test_full_queue_raises_saturated_with_a_retry_time(running, masks):
    r = running(queue_limit=5)
    e = r.engine
    a = _add(r.state, masks[0])
    with e.hold():
        first = e.submit(a, 0, 4)
        with pytest.raises(Saturated) as exc:
            e.submit(a, 1, 2)
        assert exc.value.retry_after >= 1
        e.submit(a, 2, 1)  # still fits: 4 + 1 <= 5
    assert first.result(60).shape[0] == 4
    big = e.submit(a, 3, 9)  # more than the limit is accepted by an empty queue
    assert big.result(60).shape[0] == 9


def test_promotion_elsewhere_warms_a_hot_domain(running, masks):
    r = running()
    e = r.engine
    a = _add(r.state, masks[0], "warm")
    b = _add(r.state, masks[1])
    r.run(e.generate("warm", 0, 2))  # a is hot now
    e._cache.remove(b)  # the readiness probe may have run on b (any domain's mask)
    assert not e.is_resident(b)
    r.state.domains.promote("warm", b)  # published; the listener applies and prebuilds b
    t0 = time.monotonic()
    while not (e.is_resident(b) and e.domains_view()["warm"] == b) and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert e.is_resident(b) and e.domains_view()["warm"] == b
    assert a in e._cache  # nothing needed evicting
