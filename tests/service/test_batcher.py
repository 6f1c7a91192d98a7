"""The batcher's fairness on a synthetic flood: steps shared between domains by deficit round
robin weighted by images, FIFO within a domain, nothing lost or taken twice."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from service.batcher import Batcher
from service.errors import Saturated


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


# two lanes --------------------------------------------------------------------------


def test_chunks_given_back_by_one_lane_never_repeat_what_another_lane_holds():
    """Lane A takes a request's first images, lane B its next; A gives its chunk back: the
    next take hands out exactly A's images again, never B's (each image made once)."""
    b = Batcher(queue_limit=10_000, max_batch=32, window_s=0)
    b.submit("a", None, seed=0, n=6)
    lane_a = b.take(4)
    r = lane_a[0][0]
    lane_b = b.take(2)
    assert [(s, c) for _, s, c in lane_a] == [(0, 4)] and [(s, c) for _, s, c in lane_b] == [(4, 2)]
    b.give_back(lane_a)
    again = b.take(32)
    assert [(s, c) for _, s, c in again] == [(0, 4)] and b.depth() == 0
    assert not b.written(r, 2)  # lane B's two
    assert b.written(r, 4)  # and A's four again: all six, each once


# admission by the estimated wait ------------------------------------------------------


def expected_retry(queued: int, n: int, per_image: float, lanes: int, bound: float) -> int | None:
    """From the definition (docs/OPERATIONS.md, SLT_MAX_WAIT_MS): admitted when the queue is
    empty or (queued + n) images take at most `bound` at `per_image` seconds over `lanes`;
    otherwise retry when the wait would fall to the bound (a request larger than the bound:
    when the queue ahead is done), in whole seconds, 1 to 60."""
    import math

    if queued == 0 or (queued + n) * per_image / lanes <= bound:
        return None
    if n * per_image / lanes <= bound:
        left = (queued + n) * per_image / lanes - bound
    else:
        left = queued * per_image / lanes
    return min(60, max(1, math.ceil(left)))


def test_refusal_follows_the_estimated_wait_not_the_queue_length():
    for per_image, lanes, bound, queued, n in [(0.01, 2, 1.0, 150, 1), (0.01, 2, 1.0, 250, 1),
                                               (0.1, 1, 2.0, 30, 4), (0.05, 4, 0.5, 300, 64),
                                               (0.5, 2, 1.0, 10, 8), (0.2, 1, 1.0, 2, 20)]:
        b = Batcher(queue_limit=100_000, max_batch=32, window_s=0, lanes=lanes)
        b.record(10, 10 * per_image)  # one measured pass sets the rate
        for i in range(queued):  # filled before the bound applies
            b.submit("a", None, seed=i, n=1)
        b.max_wait_s = bound
        want = expected_retry(queued, n, per_image, lanes, bound)
        assert b.refusal(n) == want, (per_image, lanes, bound, queued, n)
        if want is None:
            b.submit("a", None, seed=-1, n=n)
        else:
            try:
                b.submit("a", None, seed=-1, n=n)
            except Saturated as e:
                assert e.retry_after == want and e.wait_s > bound
            else:
                raise AssertionError("admitted past the bound")


def test_nothing_is_refused_before_a_pass_is_measured_or_with_an_empty_queue():
    b = Batcher(queue_limit=100_000, max_batch=32, window_s=0, max_wait_s=0.001)
    for i in range(500):  # no pass measured yet: no estimate to refuse by
        b.submit("a", None, seed=i, n=1)
    b.record(1, 10.0)
    assert b.refusal(1) is not None
    b.take(100_000)  # the queue handed out: a request of any size starts at once
    assert b.refusal(4096) is None


def test_a_light_domain_is_admitted_while_a_flood_on_another_is_refused():
    """Round robin shares each step equally: a light request waits for as many flood images
    as its own (here 1 + 1), not for the whole flood; the flood's next request waits for all."""
    b = Batcher(queue_limit=100_000, max_batch=32, window_s=0, lanes=2)
    b.record(10, 0.5)  # 0.05 s an image, two lanes: 40 images a second
    for i in range(100):
        b.submit("flood", None, seed=i, n=1)
    b.max_wait_s = 1.0
    assert b.images_ahead(1, "light") == 2 and b.refusal(1, "light") is None
    assert b.images_ahead(1, "flood") == 101
    assert b.refusal(1, "flood") == 2  # (101 x 0.05 / 2) - 1 = 1.525 s -> 2
    b.submit("light", None, seed=0, n=1)
    assert b.images_ahead(4, "light") == 10  # 5 of its own and 5 of the flood's


def test_masks_given_back_keep_their_turn():
    """A step of 8 masks ran one pass and gave the rest back: those 7 come first in the next
    step, before the mask whose pass ran, so none of them waits a second round."""
    b = Batcher(queue_limit=10_000, max_batch=8, window_s=0)
    for m in range(8):
        b.submit(f"m{m}", None, seed=0, n=4)
    step = b.take(8)  # one image of each mask
    ran = [c for c in step if c[0].mask_id == "m0"]
    b.give_back([c for c in step if c[0].mask_id != "m0"])
    assert ran
    b.submit("m0", None, seed=1, n=4)  # its client asks again at once
    nxt = b.take(7)
    assert [r.mask_id for r, _, _ in nxt] == [f"m{m}" for m in range(1, 8)]


# one mask a step (a CPU's lanes) ----------------------------------------------------------


def test_one_mask_steps_starve_no_mask_under_a_closed_loop():
    """Eight domains, each client sending its next request as soon as one is served, and one
    domain with a long backlog: with a step of one mask, every waiting mask is served once in
    every round of eight steps (the order a plain round robin gives), the backlog included."""
    b = Batcher(queue_limit=100_000, max_batch=4, window_s=0, one_mask_steps=True)
    masks = [f"m{i}" for i in range(8)]
    for i in range(40):
        b.submit("m0", None, seed=i, n=2)  # the backlog: 80 images
    for m in masks[1:]:
        b.submit(m, None, seed=0, n=1)
    served = []
    for _ in range(64):
        step = b.take(4)
        assert len({r.mask_id for r, _, _ in step}) == 1 and sum(c for _, _, c in step) <= 4
        m = step[0][0].mask_id
        served.append(m)
        if m != "m0":
            b.submit(m, None, seed=len(served), n=1)  # that client's next request
    for k in range(0, 64, 8):
        assert sorted(served[k:k + 8]) == masks, served[k:k + 8]


def test_one_mask_steps_serve_a_light_domain_next_behind_a_flood_over_many_domains():
    """A flood spread over eight domains (each always waiting) and a light domain's lone
    request: the light one runs in the next step, not after a pass of each of the eight."""
    b = Batcher(queue_limit=100_000, max_batch=8, window_s=0, one_mask_steps=True)
    for m in range(8):
        for i in range(20):
            b.submit(f"f{m}", None, seed=i, n=8)
    for _ in range(5):  # the flood's turn is under way
        b.take(8)
    for _ in range(3):
        b.submit("light", None, seed=0, n=1)
        step = b.take(8)
        assert [r.mask_id for r, _, _ in step] == ["light"]
        for r, _, c in step:  # its lane made it; the next one is light again
            b.written(r, c)
        order = [b.take(8)[0][0].mask_id for _ in range(3)]
        assert "light" not in order and len(set(order)) == 3  # the flood's round robin goes on


def test_a_stream_of_new_domains_cannot_starve_a_backlog():
    """A new domain every step (a Zipf tail of sparse domains) goes first at most every other
    step: the domain with a backlog runs at least half as often as under a plain round robin
    (new domains at the end of the turn, written here by hand), never starved."""
    from collections import deque

    b = Batcher(queue_limit=100_000, max_batch=4, window_s=0, one_mask_steps=True)
    for i in range(100):
        b.submit("backlog", None, seed=i, n=4)
    served, turn, ref = [], deque(["backlog"]), []
    for t in range(60):
        b.submit(f"sparse{t}", None, seed=0, n=1)
        served.append(b.take(4)[0][0].mask_id)
        turn.append(f"sparse{t}")  # the reference: plain round robin, one mask a step
        head = turn.popleft()
        ref.append(head)
        if head == "backlog":
            turn.append(head)
    assert served.count("backlog") >= ref.count("backlog") / 2 > 0, (served, ref)
    def gaps(order: list[str]) -> list[int]:
        at = [k for k, m in enumerate(order) if m == "backlog"]
        return [j - i for i, j in zip(at, at[1:])]

    assert max(gaps(served)) <= 2 * max(gaps(ref)), (gaps(served), gaps(ref))
    assert len(set(served)) > 20  # and the sparse domains were served too


def test_an_idle_gap_between_completions_does_not_lengthen_the_wait_estimate(monkeypatch):
    """The wall-clock rate counts only gaps the engine was busy through: a lone request after
    0.4 s idle is not '0.2 s an image' (which would refuse the next burst at once)."""
    import service.batcher as batcher_mod

    now = [100.0]
    monkeypatch.setattr(batcher_mod.time, "monotonic", lambda: now[0])
    b = Batcher(queue_limit=10_000, max_batch=4, window_s=0, max_wait_s=1.0)
    b.record(2, 0.02)  # a pass: 10 ms an image
    for _ in range(2):  # two lone requests, 0.4 s apart, the queue empty at each completion
        b.submit("m", None, seed=0, n=2)
        (r, _, c), = b.take(4)
        assert b.written(r, c)
        now[0] += 0.4
    assert b.estimated_wait(50, "m") == 50 * 0.01
    # busy: images still waiting at each completion, so the gaps are the engine's rate
    for i in range(4):
        b.submit("m", None, seed=i, n=2)
    for _ in range(3):
        (r, _, c), = b.take(2)
        now[0] += 0.1
        b.written(r, c)
    assert b.estimated_wait(10, "m") > 10 * 0.01  # 50 ms an image measured, not the pass's 10


def test_a_flood_domain_back_with_more_than_a_pass_queues_at_the_end_of_the_turn():
    """A domain with nothing waiting goes first only when all it waits for fits one pass (a
    light domain's request); one back with a flood's request (more than a pass) takes its place
    at the end of the turn, behind the domains already waiting, however little it was served."""
    b = Batcher(queue_limit=100_000, max_batch=4, window_s=0, one_mask_steps=True)
    for m in range(4):
        for i in range(5):
            b.submit(f"f{m}", None, seed=i, n=4)
    b.take(4)  # the turn is under way: f0 served
    b.submit("back", None, seed=0, n=8)  # never served at all, but more than a pass
    order = [b.take(4)[0][0].mask_id for _ in range(5)]
    assert order == ["f1", "f2", "f3", "f0", "back"], order
    b.submit("light", None, seed=0, n=1)
    b.submit("light", None, seed=1, n=2)  # two requests, 3 images: one pass
    step = b.take(4)
    assert [(r.mask_id, r.seed, c) for r, _, c in step] == [("light", 0, 1), ("light", 1, 2)]


def test_the_express_lane_takes_a_light_domains_requests_whole_and_nothing_else():
    """While the lanes run a flood's passes, the express lane takes only a sparse mask's
    requests (all of them, whole, fitting one pass, none under way), never a flood's images,
    even a flood request's last part that would fit; it waits until one comes, and ends on stop."""
    import threading

    b = Batcher(queue_limit=100_000, max_batch=4, window_s=0, one_mask_steps=True)
    for m in range(8):
        for i in range(3):
            b.submit(f"f{m}", None, seed=i, n=8)
    b.submit("part", None, seed=0, n=6)
    while not any(r.mask_id == "part" and r.taken for r in b._queue):
        b.take(4)  # "part" is under way, 2 of its images left: not sparse
    got: list = []
    lane = threading.Thread(target=lambda: got.append(b.next_express_work()), daemon=True)
    lane.start()
    lane.join(0.3)
    assert lane.is_alive() and not got  # nothing sparse: it waits
    light = [b.submit("light", None, seed=s, n=n) for s, n in ((0, 1), (1, 2))]
    lane.join(10)
    assert not lane.is_alive()
    assert [(r.mask_id, r.seed, start, c) for r, start, c in got[0]] == [("light", 0, 0, 1), ("light", 1, 0, 2)]
    queued = Counter()
    for r in b._queue:
        queued[r.mask_id] += r.untaken
    assert "light" not in queued and queued["part"] == 2 and all(queued[f"f{m}"] > 0 for m in range(8))
    assert light
    end: list = []
    lane = threading.Thread(target=lambda: end.append(b.next_express_work()), daemon=True)
    lane.start()
    b.stop()
    lane.join(10)
    assert end == [None]


def test_a_mask_with_a_pass_running_is_not_light_until_it_goes_idle():
    """A domain whose earlier request a lane is still making is not sparse: its next small
    request waits for the lanes (a flood's requests one by one would otherwise fill the express
    lane too), and still does once the running images are written, as it came in the same busy
    period; once the domain has gone idle, its next request is light again."""
    import threading

    b = Batcher(queue_limit=1000, max_batch=4, window_s=0, one_mask_steps=True)
    b.submit("d", None, seed=0, n=2)
    running = b.take(4)
    b.submit("d", None, seed=1, n=1)
    got: list = []
    lane = threading.Thread(target=lambda: got.append(b.next_express_work()), daemon=True)
    lane.start()
    lane.join(0.3)
    assert lane.is_alive() and not got
    for r, _, c in running:
        b.written(r, c)
    lane.join(0.3)
    assert lane.is_alive() and not got
    step = b.take(4)
    assert [(r.seed, c) for r, _, c in step] == [(1, 1)]
    for r, _, c in step:
        b.written(r, c)  # idle now
    b.submit("d", None, seed=2, n=1)
    lane.join(10)
    assert [(r.seed, c) for r, _, c in got[0]] == [(2, 1)]


def test_a_floods_short_queue_after_its_pass_lands_is_not_light():
    """Under admission a flooded domain's queue is short: when its pass lands, what arrived
    meanwhile fits one pass and nothing of it is under way. It is still a flood (it never went
    idle), so the express lane leaves it to the lanes; a light client's request, coming after
    its last one landed, is taken."""
    import threading

    b = Batcher(queue_limit=1000, max_batch=4, window_s=0, one_mask_steps=True)
    b.submit("flood", None, seed=0, n=4)
    running = b.take(4)
    b.submit("flood", None, seed=1, n=1)  # arrives while the pass runs
    b.submit("flood", None, seed=2, n=1)
    for r, _, c in running:
        b.written(r, c)  # the pass lands: 2 images wait, none under way
    got: list = []
    lane = threading.Thread(target=lambda: got.append(b.next_express_work()), daemon=True)
    lane.start()
    lane.join(0.3)
    assert lane.is_alive() and not got  # the flood's queue is the lanes'
    b.submit("light", None, seed=0, n=1)  # its domain idle: opens a busy period
    lane.join(10)
    assert [(r.mask_id, r.seed, c) for r, _, c in got[0]] == [("light", 0, 1)]
    for r, _, c in got[0]:
        b.written(r, c)
    b.submit("light", None, seed=1, n=2)  # the light client's next, after its last landed
    b.submit("light", None, seed=2, n=1)  # and one beside it: the same busy period
    assert [(r.seed, c) for r, _, c in b.next_express_work()] == [(1, 2), (2, 1)]
    assert [(r.mask_id, r.seed) for r, _, _ in b.take(4)] == [("flood", 1), ("flood", 2)]


def test_a_spare_buffer_is_made_only_once_no_pass_is_under_way():
    b = Batcher(queue_limit=100, max_batch=8, window_s=0, one_mask_steps=True)
    b.submit("a", None, seed=0, n=4)
    kind, chunks = b.next_work()
    r = chunks[0][0]
    assert kind == "step" and sum(c for _, _, c in chunks) == 4  # the pass is under way now
    b.want_spare()
    got = []
    t = threading.Thread(target=lambda: got.append(b.next_work()), daemon=True)
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # idle work never runs beside a pass
    b.written(r, 4)  # the pass landed
    t.join(5)
    assert got == [("spare", None)]
    b.stop()


def test_a_cancelled_request_leaves_the_queue_and_the_wait_estimate_at_once():
    """A request whose client left (its future cancelled) stops counting at once, in the depth
    and in the images another request would wait behind, and no step takes it."""
    b = Batcher(queue_limit=100, max_batch=4, window_s=0, one_mask_steps=True)
    gone = b.submit("a", None, seed=0, n=3)
    b.submit("a", None, seed=1, n=2)
    assert b.depth() == 5 and b.images_ahead(1, "a") == 6
    assert gone.cancel()
    assert b.depth() == 2 and b.images_ahead(1, "a") == 3
    assert [(r.seed, c) for r, _, c in b.take(4)] == [(1, 2)]
    assert b.depth() == 0


def test_the_wait_estimate_is_calibrated_by_finished_requests_against_their_estimates():
    """Requests that waited behind a queue and took twice their estimate at admission raise
    the seconds charged per image by a moving average of that ratio (closed form after k
    requests: 1 + (2 - 1)(1 - 0.95^k)); a request with at most one round of passes ahead
    (the passes' grain) teaches nothing."""
    b = Batcher(queue_limit=1000, max_batch=4, window_s=0, one_mask_steps=True)
    b.record(4, 0.04)  # 0.01 s an image on the one lane
    assert b.estimated_wait(1, "a") == pytest.approx(0.01)
    b.submit("a", None, seed=0, n=3)  # 3 images ahead: no more than one pass
    for r, _, c in b.take(4):
        r.enqueued -= 10.0  # far slower than its estimate
        b.written(r, c)
    assert b.estimated_wait(1, "a") == pytest.approx(0.01)
    k = 20
    for i in range(k):
        b.submit("a", None, seed=1 + i, n=8)  # 8 images ahead: estimated 0.08 s
        for r, _, c in b.take(8):
            r.enqueued = time.monotonic() - 2 * 0.08  # it took twice that
            b.written(r, c)
    factor = 1 + (2 - 1) * (1 - 0.95 ** k)
    assert b.estimated_wait(1, "a") == pytest.approx(0.01 * factor, rel=1e-3)
