"""The generation queue: requests counted in images and bounded (429 beyond), taken in steps of
at most `max_batch` images shared between the masks (domains) with waiting requests by deficit
round robin weighted by images: each step every waiting mask is offered an equal quantum, what
one leaves unused goes to the others, and the next step starts after the last mask served. So
a flood on one domain cannot starve another (a light domain's request waits about one step,
not behind the whole flood), and each mask's share still runs as one group. On a CPU a step is
one mask's forward pass (`one_mask_steps`): the masks take passes in turn, so a domain waits
at most one pass of each other waiting domain, and a domain that had nothing waiting goes
first when all it waits for fits one pass (a sparse flow, as in FQ-CoDel; every other step at
most), so a light domain waits about one pass behind any flood. The express lane
(`next_express_work`, one more thread beside the lanes) takes only such sparse masks' requests
that also opened their mask's busy period (it had nothing waiting or under way when the first
came: a light client's, never a backlogged flood's, whose short queue after a pass lands would
otherwise fill a third thread with tiny passes on cores the lanes already use), so a light
request starts at once, the OS sharing the cores with the flood's passes, instead of
waiting for a lane to finish one; a closed-loop light client can so take up to one lane's share
of the cores, never more, and the flood's round robin goes on as before. Also queues
idle work (weights to build, a spare buffer to make ready) and lets maintenance hold the
inference loop.

Admission is by the estimated wait, not the queue's length: a request is refused (Saturated,
429 with Retry-After) when the images ahead of it and its own, at the measured seconds per
image over the lanes that run passes at once, would not be done within `max_wait_s`. The rate is
calibrated by how long finished requests that waited behind a queue took against their
estimates, so what the count and rate miss is learnt rather than left to the tail. So the
bound means the same latency at every width and device, and a refusal is one comparison.
`queue_limit` stays as the memory bound (images held for waiting requests)."""
from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from service.errors import NotRunning, Saturated
from service.metrics import ServingMetrics
from trainer.masks import MaskFile

RECENT_DECAY = 0.9  # per step: a mask's service of about the last ten steps counts


@dataclass(eq=False)
class Request:
    """Images 0..n-1 of `seed` under one mask; holds the MaskFile itself, so the mask outlives
    any eviction from the RAM cache while the request waits."""

    mask_id: str  # or engine.BASE_KEY: the plain base
    mask: MaskFile | None  # None for the base, or a mask whose weights were resident
    seed: int
    n: int
    future: concurrent.futures.Future
    images: np.ndarray  # uint8 [n,H,W,3], filled chunk by chunk
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0  # images 0..taken-1 were handed to a step
    back: list[tuple[int, int]] = field(default_factory=list)  # (first, count) steps gave back
    done: int = 0  # images written
    z: np.ndarray | None = None  # float32 [n,nz] latents given (an interpolation), else latents(seed, i)
    opens: bool = False  # its mask had nothing waiting or under way when it came (a busy period's first)
    estimate: float = 0.0  # seconds it was estimated to take when admitted, uncalibrated (0: not measured)

    @property
    def untaken(self) -> int:
        return self.n - self.taken + sum(c for _, c in self.back)


Chunk = tuple[Request, int, int]  # (request, first index, count)


def _sparse(requests: list[Request], cap: int, flying: int) -> bool:
    """Whether a mask's waiting requests fit one pass whole and nothing of it is under way
    (`flying`: its images in running steps): a light domain's; a flood's queue is longer, or
    part of it already running."""
    return (not flying and all(r.taken == 0 and not r.back for r in requests)
            and sum(r.untaken for r in requests) <= cap)


BUSY_GAP_S = 0.5  # completions closer than this are one busy period (the wall-clock rate)
CALIBRATION_DECAY = 0.95  # per finished request: the estimate's error over about the last twenty


class Batcher:
    """A bounded queue of `Request`s and the inference loop's source of work."""

    def __init__(self, queue_limit: int, max_batch: int, window_s: float,
                 metrics: ServingMetrics | None = None, max_wait_s: float = 0.0, lanes: int = 1,
                 one_mask_steps: bool = False):
        self.queue_limit, self.max_batch, self.window_s = queue_limit, max(1, max_batch), window_s
        # a step of one mask (the next in turn, up to max_batch images): on a CPU, where a step
        # is one forward pass per lane; otherwise steps are shared between masks (a GPU's batch)
        self.one_mask_steps = one_mask_steps
        self.max_wait_s = max_wait_s  # 0: no bound on the estimated wait
        self.lanes = max(1, lanes)  # passes that run at once
        self.metrics = metrics
        self._cond = threading.Condition()  # an RLock inside: take() may be called holding it
        self._queue: deque[Request] = deque()
        self._queued = 0  # images not yet handed to a step
        self._by_mask: Counter[str] = Counter()  # the same, per mask (the DRR-aware wait)
        self._warm: deque[MaskFile] = deque()
        self._want_spare = False
        self._held = 0
        self._stopped = False
        self._per_image = 0.0  # seconds of one lane per image, moving average (0: none measured)
        # wall seconds per image of the whole engine while busy (between close completions): what
        # pass times miss, the lanes' waits for the GIL, the event loop and encoding among them
        self._per_image_wall = 0.0
        self._last_done = 0.0
        self._busy_at_last_done = False
        # finished requests' time in the engine over their estimate at admission (moving average):
        # what the rate and images ahead miss (the round robin serving other domains' newer
        # arrivals first, passes slowed by a loaded event loop), measured 1.2x at 256 connections
        self._calibration = 1.0
        self._deficit: dict[str, int] = {}  # images each waiting mask may still take (DRR)
        self._turn: deque[str] = deque()  # waiting masks in round-robin order
        self._bypassed = False  # the last step served a newly waiting mask ahead of the turn
        self._recent: dict[str, float] = {}  # images served per mask, decayed by RECENT_DECAY a step
        self._flying: Counter[str] = Counter()  # images per mask handed to steps, not yet written

    def submit(self, mask_id: str, mask: MaskFile | None, seed: int, n: int,
               shape: tuple[int, int, int] = (64, 64, 3),
               z: np.ndarray | None = None) -> concurrent.futures.Future:
        """Queue a request; the future gives uint8 [n,*shape]. Saturated when it could not start
        in time or the queue is full (an empty queue takes any request, so a request larger
        than either bound is slow, never impossible). `z`: the request's own latents [n,nz]
        instead of those of (seed, i)."""
        retry = self.refusal(n, mask_id)  # the cheap early answer, before anything is allocated
        if retry is not None:
            self._refused(retry, n, mask_id)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        req = Request(mask_id, mask, int(seed), int(n), fut, np.empty((n, *shape), np.uint8), z=z)
        with self._cond:
            if self._stopped:
                raise NotRunning("the generator is not running")
            retry = self.refusal(n, mask_id)  # again, holding the lock: the answer of record
            if retry is not None:
                self._refused(retry, n, mask_id)
            req.opens = not self._by_mask.get(mask_id) and not self._flying.get(mask_id)
            ahead = self.images_ahead(n, mask_id)
            if ahead > self.max_batch * self.lanes:  # a queue: below one round of passes, the
                req.estimate = ahead * self._measured_per_image()  # passes' grain is the error
            self._queue.append(req)
            self._count(mask_id, n)
            self._gauge_locked()
            self._cond.notify_all()
        # a cancelled request (its client gone: service.departed) leaves the queue at once, so
        # its images no longer count in the wait that admission estimates for the others
        fut.add_done_callback(lambda f, req=req: self._forget(req) if f.cancelled() else None)
        return fut

    def _forget(self, req: Request) -> None:
        """A cancelled request's images not yet handed to a step leave the queue (those in a
        step are made and dropped)."""
        with self._cond:
            if req in self._queue:
                self._count(req.mask_id, -req.untaken)
                req.taken, req.back = req.n, []
                self._queue.remove(req)
                self._gauge_locked()

    def warm(self, mask: MaskFile) -> None:
        """Ask the loop to build this mask's weights when it has nothing else to do."""
        with self._cond:
            self._warm.append(mask)
            self._cond.notify_all()

    def want_spare(self) -> None:
        """Ask the loop to make a spare weight buffer ready when it has nothing else to do."""
        with self._cond:
            self._want_spare = True
            self._cond.notify_all()

    def next_work(self) -> tuple[str, list[Chunk] | MaskFile | None] | None:
        """Block until a step is due (window over or batch full) or idle work is waiting;
        ("step", chunks), ("warm", mask) or ("spare", None); None once stopped."""
        with self._cond:
            while not self._stopped:
                if not self._held and self._queue:
                    now = time.monotonic()
                    due = self._queue[0].enqueued + self.window_s
                    if self._queued >= self.max_batch or now >= due:
                        return "step", self.take(self.max_batch)
                    self._cond.wait(due - now)
                    continue
                if not self._held and self._warm:
                    return "warm", self._warm.popleft()
                # only with no pass under way: allocating and touching a domain's buffers beside
                # a pass slows the pass (page faults, memory bandwidth), often a cold domain's first
                if not self._held and self._want_spare and not self._flying:
                    self._want_spare = False
                    return "spare", None
                self._cond.wait(0.5)
        return None

    def take(self, cap: int) -> list[Chunk]:
        """Up to `cap` images by deficit round robin over the masks with waiting requests
        (FIFO within a mask); see the module docstring."""
        with self._cond:
            live = [r for r in self._queue if not r.future.cancelled()]
            for r in self._queue:
                if r.future.cancelled():
                    self._count(r.mask_id, -r.untaken)
                    r.taken, r.back = r.n, []
            waiting = self._waiting()
            # round-robin order: masks already waiting keep their turn; a mask that had nothing
            # waiting (a light domain's lone request) goes first, as a new flow does in FQ-CoDel,
            # so behind a flood over D domains it waits one pass, not D. At most every other
            # step, so a stream of new domains cannot starve one with a backlog.
            # Among those, the one served least lately (images, decayed per step) first.
            kept = [m for m in self._turn if m in waiting]
            new = sorted((m for m in waiting if m not in self._turn), key=lambda m: self._recent.get(m, 0.0))
            # only a sparse one: what it waits for fits one pass (FQ-CoDel's new flow that ends
            # within its quantum); a flood's domain that emptied for a moment comes back with
            # more than that and queues at the end
            sparse = [m for m in new if _sparse(waiting[m], cap, self._flying[m])]
            rest = [m for m in new if m not in sparse]
            ahead = bool(sparse) and not self._bypassed
            self._turn = deque(sparse + kept + rest if ahead else kept + new)
            self._deficit = {m: d for m, d in self._deficit.items() if m in waiting}
            chunks: list[Chunk] = []
            served: list[str] = []
            while cap > 0 and waiting:
                quantum = cap if self.one_mask_steps else max(1, cap // len(waiting))
                for mask_id in list(self._turn):
                    if served and self.one_mask_steps:
                        break
                    if cap == 0 or mask_id not in waiting:
                        continue
                    allowance = self._deficit.get(mask_id, 0) + quantum
                    for r in waiting[mask_id]:
                        while allowance and cap and r.untaken:
                            if r.back:  # what a step gave back first, in order
                                start, count = r.back[0]
                                c = min(count, allowance, cap)
                                r.back[0:1] = [(start + c, count - c)] if c < count else []
                            else:
                                start, c = r.taken, min(r.n - r.taken, allowance, cap)
                                r.taken += c
                            chunks.append((r, start, c))
                            allowance -= c
                            cap -= c
                            self._count(mask_id, -c)
                    served.append(mask_id)
                    if not any(r.untaken for r in waiting[mask_id]):
                        del waiting[mask_id]
                        self._deficit.pop(mask_id, None)
                    elif not self.one_mask_steps:  # one mask a step: its turn is its quantum
                        self._deficit[mask_id] = allowance
                if served and self.one_mask_steps:
                    break
            if served:  # the next step starts after the last mask served
                self._bypassed = bool(kept) and served[0] in sparse
                self._served(chunks)
                last = served[-1]
                while self._turn and self._turn[0] != last:
                    self._turn.rotate(-1)
                self._turn.rotate(-1)
            self._queue = deque(r for r in live if r.untaken)
            self._gauge_locked()
            return chunks

    def _waiting(self) -> dict[str, list[Request]]:
        """The requests with images not yet handed to a step (not cancelled), by mask, FIFO."""
        waiting: dict[str, list[Request]] = {}
        for r in self._queue:
            if r.untaken and not r.future.cancelled():
                waiting.setdefault(r.mask_id, []).append(r)
        return waiting

    def _served(self, chunks: list[Chunk]) -> None:
        self._recent = {m: v * RECENT_DECAY for m, v in self._recent.items() if v > 0.5}
        for r, _, c in chunks:
            self._flying[r.mask_id] += c
            self._recent[r.mask_id] = self._recent.get(r.mask_id, 0.0) + c

    def _sparse_waiting(self) -> tuple[list[Request], float]:
        """(the requests of the sparse mask (all it waits for fits one pass, none of it under
        way, and the first of them opened its busy period) served least lately whose oldest
        request's window is over, or []; seconds until the next one's is)."""
        waiting = self._waiting()
        now = time.monotonic()
        sparse = {m: rs[0].enqueued + self.window_s - now for m, rs in waiting.items()
                  if rs[0].opens and _sparse(rs, self.max_batch, self._flying[m])}
        ready = [m for m, left in sparse.items() if left <= 0]
        if ready:
            return waiting[min(ready, key=lambda m: self._recent.get(m, 0.0))], 0.0
        return [], min(sparse.values(), default=0.5)

    def next_express_work(self) -> list[Chunk] | None:
        """The express lane's next step (block until one is due): one sparse mask's requests,
        whole, in one pass; None once stopped. A lane beside the others, so a light domain's
        request starts at once (the OS shares the cores) instead of waiting for a lane to
        finish a flood's pass; it takes nothing else, so the turn goes on as before."""
        with self._cond:
            while not self._stopped:
                requests, left = ([], 0.5) if self._held else self._sparse_waiting()
                if not requests:
                    self._cond.wait(left)  # a submit wakes it
                    continue
                chunks: list[Chunk] = [(r, 0, r.n) for r in requests]  # sparse: none taken yet
                for r in requests:
                    r.taken = r.n
                    self._count(r.mask_id, -r.n)
                self._served(chunks)
                self._queue = deque(r for r in self._queue if r.untaken)
                self._gauge_locked()
                return chunks
        return None

    def others_waiting(self, masks: set[str]) -> bool:
        """Whether a request of a mask outside `masks` waits: the running step should yield."""
        with self._cond:
            return any(r.mask_id not in masks and r.untaken and not r.future.cancelled()
                       for r in self._queue)

    def give_back(self, chunks: list[Chunk]) -> None:
        """Return chunks a step took but did not run, so the next take() shares them out again
        (before the request's untaken images); their requests keep their place. Another lane
        may hold other chunks of the same request meanwhile: only these ranges come back."""
        if not chunks:
            return
        with self._cond:
            for r, start, c in chunks:
                r.back = sorted([*r.back, (start, c)])
                self._count(r.mask_id, c)
            self._landed(chunks)
            # the masks given back were not served: they take their turn first, or a step that
            # ran only its first pass would move the round robin past all the others
            for mask_id in reversed(list(dict.fromkeys(r.mask_id for r, _, _ in chunks))):
                if mask_id in self._turn:
                    self._turn.remove(mask_id)
                self._turn.appendleft(mask_id)
            queued = set(map(id, self._queue))
            back = {id(r): r for r, _, _ in chunks if id(r) not in queued}
            self._queue = deque(sorted([*self._queue, *back.values()], key=lambda r: r.enqueued))
            self._gauge_locked()
            self._cond.notify_all()

    def written(self, r: Request, count: int) -> bool:
        """`count` of r's images are written (by any lane); True once all of them are."""
        with self._cond:
            r.done += count
            self._landed([(r, 0, count)])
            now = time.monotonic()
            gap = now - self._last_done
            # only a gap the engine was busy through measures its rate: images were waiting at
            # the last completion (an idle gap, a warm-up's, would make every estimate too long)
            if self._last_done and self._busy_at_last_done and gap < BUSY_GAP_S:
                per = gap / count
                self._per_image_wall = (0.9 * self._per_image_wall + 0.1 * per
                                        if self._per_image_wall else per)
            self._last_done = now
            self._busy_at_last_done = self._queued > 0
            finished = r.done == r.n
            if finished and r.estimate > 0:
                ratio = min(4.0, max(0.25, (now - r.enqueued) / r.estimate))
                self._calibration = (CALIBRATION_DECAY * self._calibration
                                     + (1 - CALIBRATION_DECAY) * ratio)
        if finished and self.metrics is not None:
            self.metrics.engine_seconds.observe(now - r.enqueued)
        return finished

    def dropped(self, chunks: list[Chunk]) -> None:
        """Chunks a step failed to make (their requests failed): no longer under way."""
        with self._cond:
            self._landed(chunks)

    def _landed(self, chunks: list[Chunk]) -> None:
        for r, _, c in chunks:
            left = self._flying[r.mask_id] - c
            if left > 0:
                self._flying[r.mask_id] = left
            else:
                self._flying.pop(r.mask_id, None)
        if not self._flying:  # idle work may wait for this
            self._cond.notify_all()

    def record(self, images: int, seconds: float) -> None:
        """One forward pass's time (weights already built), for the wait estimate."""
        if images and seconds > 0:
            per = seconds / images
            with self._cond:
                self._per_image = 0.8 * self._per_image + 0.2 * per if self._per_image else per

    def _count(self, mask_id: str, images: int) -> None:
        self._queued += images
        left = self._by_mask[mask_id] + images
        if left > 0:
            self._by_mask[mask_id] = left
        else:
            self._by_mask.pop(mask_id, None)

    def images_ahead(self, n: int, mask_id: str | None = None) -> int:
        """Images made before a new request of `n` under `mask_id` is done: its mask's queued
        images and its own, and of every other waiting mask as many at most, as the deficit
        round robin shares steps equally (so a light domain's request is not charged for a
        flood on another). Without a mask: the whole queue and `n`."""
        with self._cond:
            if mask_id is None:
                return self._queued + n
            mine = self._by_mask.get(mask_id, 0) + n
            return mine + sum(min(q, mine) for m, q in self._by_mask.items() if m != mask_id)

    def _measured_per_image(self) -> float:
        """The engine's seconds per image: the passes' own over the lanes, or the wall time
        between completions when that is longer (0 until a pass is measured)."""
        return max(self._per_image / self.lanes, self._per_image_wall) if self._per_image else 0.0

    def _seconds_per_image(self) -> float:
        """The measured rate, calibrated by how long finished requests took against their
        estimates: what the wait estimate charges per image ahead."""
        return self._measured_per_image() * self._calibration

    def estimated_wait(self, n: int = 0, mask_id: str | None = None) -> float:
        """Seconds until a new request of `n` images is done, at the measured rate."""
        return self.images_ahead(n, mask_id) * self._seconds_per_image()

    def refusal(self, n: int, mask_id: str | None = None) -> int | None:
        """None if a request of `n` images under `mask_id` is admitted now, else its
        Retry-After in seconds: a few dict reads, cheap enough to answer a flood
        (service.admission)."""
        with self._cond:
            queued, per = self._queued, self._seconds_per_image()
            if not queued:
                return None
            if queued + n > self.queue_limit:
                return self._retry_after(queued * per)
            if self.max_wait_s <= 0 or per <= 0:
                return None
            ahead = self.images_ahead(n, mask_id)
        wait = ahead * per
        if wait <= self.max_wait_s:
            return None
        # when the wait falls to the bound; a request larger than the bound waits for the rest
        return self._retry_after(wait - self.max_wait_s if n * per <= self.max_wait_s
                                 else (ahead - n) * per)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the inference loop from starting new steps (maintenance, tests of the queue)."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def stop(self) -> list[Request]:
        """Refuse new requests, wake the loop; returns the requests still waiting."""
        with self._cond:
            self._stopped = True
            pending, self._queue = list(self._queue), deque()
            self._queued = 0
            self._by_mask.clear()
            self._gauge_locked()
            self._cond.notify_all()
        return pending

    def depth(self) -> int:
        with self._cond:
            return self._queued

    def count_refusal(self) -> None:
        """One 429 more on the metrics (here, or answered early by service.admission)."""
        if self.metrics is not None:
            self.metrics.rejected.inc()

    def _refused(self, retry_after: int, n: int, mask_id: str | None) -> None:
        self.count_refusal()
        raise Saturated(retry_after, self.estimated_wait(n, mask_id))

    @staticmethod
    def _retry_after(seconds: float) -> int:
        """Whole seconds (HTTP's Retry-After), at least 1, at most a minute."""
        return int(min(60, max(1, math.ceil(seconds))))

    def _gauge_locked(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_images.set(self._queued)
