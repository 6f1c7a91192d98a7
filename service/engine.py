"""Generation engine: one frozen base on the device, a mask per domain, dynamic batching.

- The base is built once from `settings.base_spec` and identified by its `base_sha256`.
- Every known mask is held in RAM as packed bits (~1 bit per weight). The hot masks' weights
  (base x mask, plus the mask's BatchNorm statistics) live on the device in an LRU cache
  bounded in bytes; pinned domains are never evicted. A forward pass is
  `functional_call(base, weights, z)`, so switching domains is choosing a dict.
- Domain -> mask_id is a local view of the Redis registry, updated by pub/sub from a thread with
  its own connection (so a promotion anywhere applies on the next request here), re-read on a
  miss and refreshed periodically in case a message was lost.
- Requests go into a bounded queue (counted in images). One inference thread waits up to
  `batch_window_ms` after the oldest request, takes up to `max_batch` images, filling by domain
  in order of the oldest waiting request (so a mixed stream still runs in large per-domain
  groups), runs each group and resolves the requests' futures.
- Image i of seed s is made from `latents(s, i)` with BN in eval mode, and never in a batch of 1
  (PyTorch's CPU convolutions round differently there), so it never depends on its batch.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import redis
import torch
from torch.func import functional_call

from service.metrics import ServingMetrics, job_counts
from store.connection import connect
from store.domains import CHANNEL, DomainRegistry
from trainer.generator import base_sha256, build_base, latents
from trainer.masks import MaskError, MaskFile, check_base, check_shapes, decode_mask
from trainer.settings import resolve_device
from trainer.ticket import to_uint8

log = logging.getLogger(__name__)

BASE_KEY = ""  # the plain base (its own BN buffers): the readiness probe runs on it
REFRESH_S = 30.0  # full registry re-read, in case a pub/sub message was lost


class EngineError(Exception):
    """Base of the engine's errors; each maps to one HTTP status in the routes."""


class UnknownDomain(EngineError, LookupError):
    pass


class UnknownMask(EngineError, LookupError):
    pass


class MaskUnavailable(EngineError):
    """A domain's active mask is neither in the catalog nor in Redis (503)."""


class Saturated(EngineError):
    def __init__(self, retry_after: int):
        super().__init__(f"generation queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class NotRunning(EngineError):
    """Base not built yet, or the engine is shutting down (503)."""


class GenerationFailed(EngineError):
    pass


@dataclass(eq=False)
class _Request:
    mask_id: str
    seed: int
    n: int
    future: concurrent.futures.Future
    images: np.ndarray  # uint8 [n,H,W,3], filled chunk by chunk
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0  # images handed to a step
    done: int = 0  # images written


@dataclass
class Generation:
    domain: str
    mask_id: str
    base_sha256: str
    seed: int
    indices: list[int]
    images: np.ndarray  # uint8 [n,64,64,3]


class WeightCache:
    """Masked weight dicts on the device, least recently used evicted first, counted in bytes.
    Keys in `keep` (pinned domains, the current step) are never evicted."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[str, tuple[dict[str, torch.Tensor], int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, weights: dict[str, torch.Tensor], nbytes: int,
            keep: set[str]) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """Insert `key`, then evict LRU entries outside `keep` until under budget; returns the
        evicted entries."""
        evicted = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (weights, nbytes)
            self.bytes += nbytes
            for victim in list(self._entries):
                if self.bytes <= self.budget:
                    break
                if victim == key or victim in keep:
                    continue
                weights_v, nbytes_v = self._entries.pop(victim)
                self.bytes -= nbytes_v
                evicted.append((victim, weights_v))
        return evicted

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def decode_untrusted(data: bytes) -> MaskFile:
    """decode_mask for bytes from outside (an upload, a Redis blob): whatever a malformed file
    makes the parser raise becomes a MaskError naming the defect, never an unhandled error."""
    try:
        return decode_mask(data)
    except MaskError:
        raise
    except Exception as e:  # a header the parser did not foresee (odd shapes, offsets, types)
        raise MaskError(f"malformed safetensors header or tensor entry "
                        f"({type(e).__name__}: {e})") from None


def evaluation_by_split(sidecar: dict) -> dict[str, dict]:
    """A mask's evaluation sidecar as `{split: metrics}`, the format `python -m trainer evaluate
    --record` and the worker write (`{"heldout": {"fid": ..., "kid": ..., "n": ...}}`). A flat
    dict of metrics (older workers wrote one) is shown under its own `split`, else `heldout`."""
    out = {str(k): v for k, v in sidecar.items() if isinstance(v, dict)}
    flat = {k: v for k, v in sidecar.items() if not isinstance(v, dict)}
    if flat:
        split = flat.get("split") if isinstance(flat.get("split"), str) else "heldout"
        out.setdefault(split, flat)
    return out


def weight_bytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


class Engine:
    """The one generation engine of an API process (see the module docstring)."""

    def __init__(self, settings, state):
        self.settings, self.state = settings, state
        self.metrics = ServingMetrics()
        self.metrics.watch_jobs(lambda: job_counts(self.state.redis))
        self.spec = settings.base_spec
        self.device = torch.device(resolve_device(settings.device))
        self.threads = settings.torch_threads or torch.get_num_threads()
        self.max_batch = max(1, settings.max_batch)
        self.window_s = max(0.0, settings.batch_window_ms) / 1000.0
        self.base: torch.nn.Module | None = None
        self.base_sha = ""
        self._params: dict[str, torch.Tensor] = {}
        self._masks: dict[str, MaskFile] = {}  # mask_id -> packed bits in RAM (served base only)
        self._info: dict[str, dict] = {}  # mask_id -> MaskFile.info() (immutable per id)
        self._unservable: set[str] = set()  # catalog files of another base, or corrupt
        self._active: dict[str, str] = {}  # domain -> mask_id, local view of the registry
        self._pinned: set[str] = set()  # pinned domains
        self._lock = threading.Lock()  # guards _masks, _info, _active, _pinned
        self._load_lock = threading.Lock()  # one catalog/blob load at a time
        self._cond = threading.Condition()  # guards the queue below
        self._queue: deque[_Request] = deque()
        self._queued = 0  # images not yet handed to a step
        self._warm: deque[str] = deque()  # masks to build while idle
        self._held = 0
        self._cache = WeightCache(settings.device_cache_bytes)
        self._spare: dict[str, torch.Tensor] | None = None  # an evicted entry's buffers, reused
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rate = 0.0  # images/s, moving average, for Retry-After
        self._probe: asyncio.Task | None = None
        self.base_ready = False
        self.generated_ok = False

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # a fixed thread count: PyTorch's CPU kernels split reductions by thread, so outputs
        # are only reproducible at one count
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        await asyncio.to_thread(self._build_base)
        await asyncio.to_thread(self._load_catalog)
        self._threads = [threading.Thread(target=self._infer_loop, name="slt-infer", daemon=True),
                         threading.Thread(target=self._listen, name="slt-domains", daemon=True)]
        for t in self._threads:
            t.start()
        self._probe = asyncio.create_task(self._first_generation())

    async def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            pending, self._queue = list(self._queue), deque()
            self._queued = 0
        for req in pending:
            _fail(req.future, NotRunning("the service is shutting down"))
        if self._probe is not None:
            self._probe.cancel()
        for t in self._threads:
            await asyncio.to_thread(t.join, 30)

    def _build_base(self) -> None:
        t0 = time.monotonic()
        base = build_base(self.spec, "cpu").eval()
        sha = base_sha256(base)
        base = base.to(self.device)
        if base_sha256(base) != sha:  # the copy to the device must be exact
            raise RuntimeError(f"base changed when moved to {self.device}")
        self.base, self.base_sha = base, sha
        self._params = dict(base.named_parameters())
        self.base_ready = True
        log.info("base %s built on %s in %.2f s: base_sha256=%s, %d torch threads",
                 self.spec.to_json(), self.device, time.monotonic() - t0, sha, self.threads)

    def _load_catalog(self, quiet: bool = False) -> None:
        """Hold every catalog mask of the served base in RAM; others are listed, not served."""
        for mask_id in self.state.catalog.ids():
            if mask_id in self._masks or (quiet and mask_id in self._unservable):
                continue
            try:
                self.load_mask(mask_id)
            except (MaskError, UnknownMask, OSError) as e:
                self._unservable.add(mask_id)
                log.warning("mask %s not served: %s", mask_id[:12], e)
        if not quiet:
            log.info("%d masks in RAM (%d bytes)", len(self._masks), self.ram_bytes())

    async def _first_generation(self) -> None:
        """Readiness: one real generation through the whole path (a domain if one exists)."""
        try:
            await asyncio.to_thread(self._refresh_domains, self.state.domains)
        except redis.RedisError as e:
            log.warning("domain registry unreadable at startup: %s", e)
        with self._lock:
            candidates = [m for m in self._active.values() if m in self._masks][:1]
        for key in candidates + [BASE_KEY]:
            try:
                await asyncio.wrap_future(self.submit(key, 0, 2))
                self.generated_ok = True
                log.info("first generation succeeded (%s)", key[:12] or "plain base")
                return
            except Exception:
                log.exception("first generation on %s failed", key[:12] or "plain base")

    @property
    def ready(self) -> bool:
        return self.base_ready and self.generated_ok and not self._stop.is_set()

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

    # masks -------------------------------------------------------------------------------

    def verify(self, mask: MaskFile) -> None:
        """Raise ForeignMaskError or MaskError unless `mask` fits the served base exactly: its
        base_sha256, and every conv weight, bias and BatchNorm statistic with its shape."""
        check_base(mask, self.base_sha)
        check_shapes(mask, self.base)

    def _remember(self, mask: MaskFile) -> MaskFile:
        with self._lock:
            self._masks.setdefault(mask.mask_id, mask)
            self.metrics.masks_in_ram.set(len(self._masks))
            self.metrics.masks_ram_bytes.set(self.ram_bytes_locked())
            return self._masks[mask.mask_id]

    def load_mask(self, mask_id: str) -> MaskFile:
        """The mask in RAM; else from the catalog; else from its Redis blob (verified, then
        added to the catalog). Raises UnknownMask, ForeignMaskError or MaskError. Blocking."""
        with self._lock:
            if mask_id in self._masks:
                return self._masks[mask_id]
        with self._load_lock:
            with self._lock:
                if mask_id in self._masks:
                    return self._masks[mask_id]
            try:
                mask = self.read_catalog(mask_id)
            except KeyError:
                data = self.state.blobs.get(mask_id)
                if data is None:
                    raise UnknownMask(mask_id) from None
                mask = decode_untrusted(data)
                self.verify(mask)
                self.state.catalog.add(data)
                log.info("mask %s fetched from Redis into the catalog", mask_id[:12])
            else:
                self.verify(mask)
            return self._remember(mask)

    def read_catalog(self, mask_id: str) -> MaskFile:
        """The catalog's file for `mask_id` (KeyError if none); a malformed file is a MaskError."""
        try:
            return self.state.catalog.read(mask_id)
        except (KeyError, MaskError, OSError):
            raise
        except Exception as e:  # a damaged file the parser did not foresee
            raise MaskError(f"catalog file of {mask_id[:12]} is malformed ({type(e).__name__}: {e})") from None

    def import_mask(self, data: bytes) -> tuple[MaskFile, bool]:
        """Verify uploaded mask bytes, store them in the catalog and as a Redis blob; also
        says whether the catalog had it already. Any defect of the file is a MaskError
        (ForeignMaskError for another base). Blocking."""
        mask = decode_untrusted(data)
        self.verify(mask)
        try:
            info = mask.info()  # what GET /masks will show: readable before it is accepted
        except Exception as e:
            raise MaskError(f"mask metadata cannot be read ({type(e).__name__}: {e})") from None
        existed = mask.mask_id in self.state.catalog
        self.state.catalog.add(data, self.base_sha)
        self.state.blobs.put(mask.mask_id, data)
        with self._lock:
            self._info.setdefault(mask.mask_id, info)
        return self._remember(mask), existed

    def mask_info(self, mask_id: str) -> dict:
        """Metadata of a catalog mask (cached: the file never changes), plus its evaluation
        (`{split: metrics}`), whether this service can serve it and which domains use it."""
        with self._lock:
            info = self._info.get(mask_id)
        if info is None:
            mask = self._masks.get(mask_id) or self.read_catalog(mask_id)
            info = mask.info()
            with self._lock:
                self._info[mask_id] = info
        out = dict(info)
        evaluation = evaluation_by_split(self.state.catalog.metrics(mask_id))
        if evaluation:
            out["evaluation"] = evaluation
        out["served"] = out.get("base_sha256") == self.base_sha and mask_id in self._masks
        with self._lock:
            out["domains"] = sorted(d for d, m in self._active.items() if m == mask_id)
        out["resident"] = mask_id in self._cache
        return out

    def ram_bytes_locked(self) -> int:
        return sum(sum(a.nbytes for a in m.packed.values()) + sum(a.nbytes for a in m.bn.values())
                   for m in self._masks.values())

    def ram_bytes(self) -> int:
        with self._lock:
            return self.ram_bytes_locked()

    def stats(self) -> dict:
        """Serving state in numbers, for /readyz and the benchmark."""
        with self._lock:
            masks, ram = len(self._masks), self.ram_bytes_locked()
        return {"base_sha256": self.base_sha, "device": str(self.device),
                "torch_threads": self.threads, "masks_in_ram": masks, "masks_ram_bytes": ram,
                "resident_masks": len(self._cache), "resident_bytes": self._cache.bytes,
                "queue_images": self.queue_depth()}

    def is_resident(self, mask_id: str | None) -> bool:
        return bool(mask_id) and mask_id in self._cache

    # domains -----------------------------------------------------------------------------

    async def resolve(self, domain: str) -> str:
        """The domain's active mask_id (local view; the registry on a miss)."""
        with self._lock:
            mask_id = self._active.get(domain)
        if mask_id:
            return mask_id
        rec = await asyncio.to_thread(self.state.domains.get, domain)
        if not rec or not rec.get("mask_id"):
            raise UnknownDomain(domain)
        self.apply(rec)
        return rec["mask_id"]

    def apply(self, rec: dict) -> None:
        """Take a registry record as the domain's state here; warm the new mask if the domain
        was hot, so a promotion does not make the next request pay the swap."""
        name, mask_id, pinned = rec.get("name"), rec.get("mask_id"), bool(rec.get("pinned"))
        if not name or not mask_id:
            return
        with self._lock:
            old = self._active.get(name)
            self._active[name] = mask_id
            was_pinned = name in self._pinned
            (self._pinned.add if pinned else self._pinned.discard)(name)
        hot = pinned or (old is not None and old in self._cache)
        if (old != mask_id or pinned != was_pinned) and hot and mask_id in self._masks:
            with self._cond:
                self._warm.append(mask_id)
                self._cond.notify_all()
        if old != mask_id:
            log.info("domain %s -> mask %s", name, mask_id[:12])

    def _refresh_domains(self, registry: DomainRegistry) -> None:
        for rec in registry.all():
            self.apply(rec)

    def _listen(self) -> None:
        """Pub/sub on `slt:domains` with a connection of its own; reconnects with backoff."""
        url = getattr(self.state, "redis_url", None)
        delay = 0.5
        while not self._stop.is_set():
            client = None
            try:
                client = connect(url)
                registry = DomainRegistry(client)
                ps = client.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(CHANNEL)
                self._refresh_domains(registry)  # whatever changed while we were not listening
                last, delay = time.monotonic(), 0.5
                while not self._stop.is_set():
                    msg = ps.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        self._on_message(msg["data"], registry)
                    if time.monotonic() - last > REFRESH_S:
                        self._refresh_domains(registry)
                        self._load_catalog(quiet=True)  # masks written here but not promoted
                        last = time.monotonic()
                ps.close()
            except redis.RedisError as e:
                log.warning("domain listener: %s; reconnecting in %.1f s", e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # keep listening whatever one bad message does
                log.exception("domain listener failed; restarting")
                self._stop.wait(1.0)
            finally:
                if client is not None:
                    client.close()

    def _on_message(self, data: bytes, registry: DomainRegistry) -> None:
        try:
            name = json.loads(data)["domain"]
            rec = registry.get(name)  # the registry is the truth, whatever order messages came in
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring malformed domain message %r: %s", data[:200], e)
            return
        if rec is None:
            return
        try:
            self.load_mask(rec["mask_id"])
        except (EngineError, MaskError) as e:
            log.warning("domain %s promoted to mask %s, which this host cannot serve: %s",
                        name, str(rec["mask_id"])[:12], e)
        self.apply(rec)

    def domains_view(self) -> dict[str, str]:
        with self._lock:
            return dict(self._active)

    # requests ----------------------------------------------------------------------------

    async def generate(self, domain: str, seed: int, n: int) -> Generation:
        """n images (indices 0..n-1) of `seed` under the domain's active mask."""
        mask_id = await self.resolve(domain)
        if mask_id not in self._masks:
            try:
                await asyncio.to_thread(self.load_mask, mask_id)
            except UnknownMask:
                raise MaskUnavailable(f"domain {domain!r} points to mask {mask_id}, which is neither "
                                      f"in this host's catalog nor in Redis") from None
        images = await asyncio.wrap_future(self.submit(mask_id, seed, n))
        self.metrics.images.labels(domain).inc(n)
        return Generation(domain, mask_id, self.base_sha, seed, list(range(n)), images)

    def submit(self, mask_id: str, seed: int, n: int) -> concurrent.futures.Future:
        """Queue images 0..n-1 of `seed` under a mask already in RAM (or BASE_KEY); the future
        gives uint8 [n,H,W,3]. Raises Saturated when the queue is full. Thread-safe."""
        if not self.base_ready or self._stop.is_set():
            raise NotRunning("the generator is not running")
        if mask_id != BASE_KEY and mask_id not in self._masks:
            raise UnknownMask(mask_id)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        req = _Request(mask_id, int(seed), int(n), fut, np.empty((n, 64, 64, 3), np.uint8))
        with self._cond:
            # an empty queue takes any request, so n > queue_limit is slow, never impossible
            if self._queued and self._queued + n > self.settings.queue_limit:
                self.metrics.rejected.inc()
                raise Saturated(self._retry_after_locked())
            self._queue.append(req)
            self._queued += n
            self.metrics.queue_images.set(self._queued)
            self._cond.notify_all()
        return fut

    def _retry_after_locked(self) -> int:
        rate = self._rate or 1.0
        return int(min(60, max(1, math.ceil(self._queued / rate))))

    def queue_depth(self) -> int:
        with self._cond:
            return self._queued

    # inference ---------------------------------------------------------------------------

    def _next_work(self) -> tuple[str, object] | None:
        """Block until a step is due (window over or batch full) or a warm-up is asked for."""
        with self._cond:
            while not self._stop.is_set():
                if not self._held and self._queue:
                    now = time.monotonic()
                    due = self._queue[0].enqueued + self.window_s
                    if self._queued >= self.max_batch or now >= due:
                        return "step", self._take(self.max_batch)
                    self._cond.wait(due - now)
                    continue
                if not self._held and self._warm:
                    return "warm", self._warm.popleft()
                self._cond.wait(0.5)
        return None

    def _take(self, cap: int) -> list[tuple[_Request, int, int]]:
        """Up to `cap` images, by domain in order of each domain's oldest waiting request:
        requests of the same mask share one forward pass even when they arrived apart."""
        live = [r for r in self._queue if not r.future.cancelled()]
        for r in self._queue:
            if r.future.cancelled():
                self._queued -= r.n - r.taken
        order = list(dict.fromkeys(r.mask_id for r in live))
        chunks = []
        for mask_id in order:
            for r in live:
                if cap == 0:
                    break
                if r.mask_id != mask_id or r.taken == r.n:
                    continue
                c = min(r.n - r.taken, cap)
                chunks.append((r, r.taken, c))
                r.taken += c
                cap -= c
                self._queued -= c
        self._queue = deque(r for r in live if r.taken < r.n)
        self.metrics.queue_images.set(self._queued)
        return chunks

    def _infer_loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            work = self._next_work()
            if work is None:
                return
            kind, arg = work
            try:
                if kind == "step":
                    self._step(arg)
                elif arg in self._masks:
                    self._weights(arg, self._keep())
            except Exception:  # the loop must survive anything one step does
                log.exception("inference %s failed", kind)

    def _keep(self) -> set[str]:
        with self._lock:
            return {self._active[d] for d in self._pinned if d in self._active}

    def _step(self, chunks: list[tuple[_Request, int, int]]) -> None:
        if not chunks:
            return
        t0 = time.perf_counter()
        groups: dict[str, list[tuple[_Request, int, int]]] = {}
        for c in chunks:
            groups.setdefault(c[0].mask_id, []).append(c)
        keep = self._keep() | set(groups)
        total = 0
        for mask_id, group in groups.items():
            try:
                weights = self._weights(mask_id, keep)
                z = torch.cat([latents(r.seed, start, c, self.spec.nz) for r, start, c in group])
                images = to_uint8(self._forward(weights, z))
            except Exception as e:
                log.exception("generation failed for mask %s", mask_id[:12] or "base")
                for r, _, _ in group:
                    _fail(r.future, GenerationFailed(f"generation failed: {type(e).__name__}"))
                continue
            off = 0
            for r, start, c in group:
                r.images[start:start + c] = images[off:off + c]
                off += c
                r.done += c
                if r.done == r.n:
                    _resolve(r.future, r.images)
            total += off
        dt = time.perf_counter() - t0
        self.metrics.step_seconds.observe(dt)
        self.metrics.batch_images.observe(sum(c for _, _, c in chunks))
        self.metrics.batch_domains.observe(len(groups))
        if total and dt > 0:
            self._rate = 0.8 * self._rate + 0.2 * (total / dt) if self._rate else total / dt

    def _forward(self, weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Run the base with `weights` on z [b,nz]; never at batch 1 (see module docstring).
        On CUDA every pass has the same shape (max_batch), so cuDNN picks the same kernels."""
        b = z.shape[0]
        size = max(2, self.max_batch, b) if self.device.type == "cuda" else max(2, b)
        if size > b:
            z = torch.cat([z, z[:1].expand(size - b, -1)])
        with torch.inference_mode():
            x = functional_call(self.base, weights, (z.to(self.device),))
        return x[:b]

    def _weights(self, mask_id: str, keep: set[str]) -> dict[str, torch.Tensor]:
        """The mask's weights on the device: from the cache, else built (a cold switch)."""
        if mask_id == BASE_KEY:
            return {}
        weights = self._cache.get(mask_id)
        if weights is not None:
            self.metrics.cache_hits.inc()
            return weights
        self.metrics.cache_misses.inc()
        t0 = time.perf_counter()
        spare, self._spare = self._spare, None
        weights = self.build_weights(self._masks[mask_id], out=spare)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.metrics.swap_seconds.observe(time.perf_counter() - t0)
        evicted = self._cache.put(mask_id, weights, weight_bytes(weights), keep)
        if evicted:  # a full cache: the next cold switch writes into memory already mapped
            self._spare = evicted[-1][1]
        self.metrics.cache_evictions.inc(len(evicted))
        self.metrics.cache_bytes.set(self._cache.bytes)
        self.metrics.cache_entries.set(len(self._cache))
        return weights

    @torch.inference_mode()
    def build_weights(self, mask: MaskFile,
                      out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """base param x mask for every masked parameter, and the mask's BN statistics, written
        into `out`'s tensors where they fit (no fresh pages to fault in). Multiplying (not
        `where`) keeps exactly the reference ticket's values, signed zeros included."""
        spare, out = out or {}, {}
        for name, packed in mask.packed.items():
            p = self._params[name]
            if self.device.type == "cpu":  # numpy's unpackbits is the fastest unpack on a CPU
                bits = torch.from_numpy(np.unpackbits(packed, count=p.numel()).view(np.bool_))
            else:  # ship ~1 bit per weight, unpack on the device
                from trainer.masks import unpack_bits

                bits = unpack_bits(torch.from_numpy(packed).to(self.device), (p.numel(),))
            buf = spare.get(name)
            if buf is not None and buf.shape == p.shape and buf.dtype == p.dtype:
                out[name] = torch.mul(p, bits.view(p.shape), out=buf)
            else:
                out[name] = p * bits.view(p.shape)
        for name, v in mask.bn.items():
            out[name] = torch.from_numpy(v).to(self.device, torch.float32)
        return out


def _resolve(fut: concurrent.futures.Future, value) -> None:
    try:
        if not fut.done():
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


def _fail(fut: concurrent.futures.Future, exc: BaseException) -> None:
    try:
        if not fut.done():
            fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass
