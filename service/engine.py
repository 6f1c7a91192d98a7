"""Generation engine: one frozen base on the device, a mask per domain, dynamic batching.

- The base is built once from `settings.base_spec` and identified by its `base_sha256`.
- Masks come from the RAM cache (`service.mask_cache`), domains from this replica's view of
  the registry (`service.domain_mirror`), requests from the queue (`service.batcher`).
- The hot masks' weights (base x mask, plus the mask's BatchNorm statistics) live on the
  device in an LRU cache bounded in bytes; pinned domains are never evicted. A forward pass sets
  a mask's tensors on the lane's TorchScript trace of the base and runs it, so switching domains
  is choosing a dict. The trace runs the whole pass in C++ with the GIL released: eager PyTorch
  takes the GIL back between every op, so a busy HTTP loop (a storm of 429s) would stall each
  pass dozens of times; the trace's kernels are the eager ones (its optimiser is off), so the
  pixels are the eager module's, bit for bit (tested).
- Inference lanes (threads; one on CUDA, `SLT_TORCH_THREADS` or the machine's cores on a CPU)
  each take steps from the queue, run each mask's group and resolve the requests' futures; when
  idle they build the weights of a hot domain's newly promoted mask, and on a CPU make one domain's
  weight buffers ready (allocated and touched), so a cold switch writes into mapped memory
  instead of faulting in fresh pages on the request's path. On a CPU every forward pass
  runs on one thread (PyTorch's intra-op count is 1) and parallelism is passes side by side:
  small convolutions split over threads spend their time in barriers (and far worse when the
  cores are shared with a search or the HTTP loop), and a split reduction rounds differently at
  each thread count, so pixels would depend on the replica's machine. One thread per pass gives
  the same bytes from every CPU replica, whatever its core count. On a CPU one lane more, the
  express lane (`SLT_EXPRESS_LANE`), runs only light requests (service.batcher): a light domain's
  image starts at once beside a flood's passes rather than after one of them.
- Image i of seed s is made from `latents(s, i)` with BN in eval mode, and never in a batch of 1
  (PyTorch's CPU convolutions round differently there), so it never depends on its batch.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import os
import sys
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import redis
import torch

from service.batcher import Batcher, Chunk
from service.domain_mirror import Change, DomainMirror
from service.errors import (
    EngineError,
    ForeignBase,
    GenerationFailed,
    MaskUnavailable,
    NotRunning,
    UnknownMask,
)
from service.mask_cache import MaskCache
from service.metrics import ServingMetrics
from service.settings import Settings
from store.catalog import DeletedMask, SharedCatalog, UnindexedMask
from store.domains import DomainRegistry
from trainer.generator import base_sha256, build_base, latents, prunable_names
from trainer.masks import ForeignMaskError, MaskError, MaskFile, check_base, check_shapes
from trainer.settings import resolve_device
from trainer.ticket import to_uint8

log = logging.getLogger(__name__)

BASE_KEY = ""  # the plain base (its own BN buffers): the readiness probe runs on it


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

    def remove(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry[1]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class TracedBase:
    """A TorchScript trace of the base whose tensors are set before each pass: a mask's weights
    where it has them, the base's own elsewhere. One per lane: setting tensors is not safe while
    another thread runs the same trace. The tensors are shared with the base, never copied."""

    def __init__(self, base: torch.nn.Module, nz: int, device: torch.device):
        # traced on a copy that shares the base's tensors (tracing must not touch the base)
        shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}
        # torch.jit is deprecated in favour of torch.compile/export, but those generate their own
        # kernels (other pixels); the trace is the one way to run eager's kernels off the GIL
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.trace(copy.deepcopy(base, memo=shared),
                                          torch.zeros(2, nz, device=device), check_trace=False)
        self._own = {**dict(base.named_parameters()), **dict(base.named_buffers())}
        self._slots = []  # (the C++ submodule, attribute, full name) of every tensor
        for name in self._own:
            *path, attr = name.split(".")
            sub = self.module
            for part in path:
                sub = getattr(sub, part)
            self._slots.append((sub._c, attr, name))
        self._loaded: dict[str, torch.Tensor] | None = None

    def __call__(self, weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        if weights is not self._loaded:  # the same dict is the same mask (cached dicts are never
            for sub, attr, name in self._slots:  # changed; `_loaded` keeps this one alive)
                sub.setattr(attr, weights.get(name, self._own[name]))
            self._loaded = weights
        return self.module(z)


def weight_bytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


class Engine:
    """The one generation engine of an API process (see the module docstring)."""

    def __init__(self, settings: Settings, catalog: SharedCatalog, registry: DomainRegistry,
                 redis_url: str | None = None,
                 job_counts: Callable[[], dict[str, int] | None] | None = None):
        self.settings = settings
        self.catalog = catalog
        self.metrics = ServingMetrics()
        if job_counts is not None:
            self.metrics.watch_jobs(job_counts)
        self.spec = settings.base_spec
        self.device = torch.device(resolve_device(settings.device))
        # passes that run at once: one stream of kernels on CUDA; a pass per core on a CPU
        self.lanes = 1 if self.device.type == "cuda" else (settings.torch_threads or _cores())
        # a lane for light requests beside them (CPU: passes are threads the OS shares out)
        self.express = self.device.type != "cuda" and settings.express_lane
        self.max_batch = max(1, settings.max_batch)
        # CUDA passes are always max_batch wide (fixed kernels), so slicing buys nothing there
        self.slice_images = (self.max_batch if self.device.type == "cuda" or not settings.step_slice_images
                             else max(2, min(settings.step_slice_images, self.max_batch)))
        self.base: torch.nn.Module | None = None
        self.base_sha = ""
        self._params: dict[str, torch.Tensor] = {}
        self.masks = MaskCache(catalog, self.verify, settings.mask_ram_bytes, self.metrics)
        self.mirror = DomainMirror(registry, redis_url, on_change=self._on_domain_change,
                                   on_mask_deleted=self.forget_mask,
                                   socket_timeout_s=settings.redis_socket_timeout_s,
                                   on_store_loss=self._republish, on_refresh=self._forget_deleted)
        # no version below what this replica holds, even in a store that lost its counter
        registry.floor = self.mirror.highest_version
        # this host's mask files in use (served by a domain, or pinned) are evicted last
        catalog.protected = self.masks_in_use
        self._republishing = threading.Lock()
        # on a CPU a step is one pass of one mask: each lane takes the next mask in turn, so no
        # domain waits behind passes another lane holds (a step of many masks, cut into passes,
        # would keep the later masks from the other lanes and run the largest group last)
        cpu = self.device.type != "cuda"
        self.batcher = Batcher(settings.queue_limit, self.slice_images if cpu else self.max_batch,
                               max(0.0, settings.batch_window_ms) / 1000.0, self.metrics,
                               max_wait_s=max(0.0, settings.max_wait_ms) / 1000.0, lanes=self.lanes,
                               one_mask_steps=cpu)
        self._cache = WeightCache(settings.device_cache_bytes)
        # one domain's buffers for the next cold build: an evicted entry's, or made ready when idle
        self._spare: dict[str, torch.Tensor] | None = None
        self._build = threading.Lock()  # one cold build at a time (it may reuse `_spare`)
        self._in_use: Counter[str] = Counter()  # masks of the steps the lanes run: never evicted
        self._in_use_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.intra_op_threads: set[int] = set()  # as each lane set it (the test of the claim)
        self._probe: asyncio.Task | None = None
        self.base_ready = False
        self.generated_ok = False

    # lifecycle ---------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Threads that run forward passes (the lanes)."""
        return self.lanes

    async def start(self) -> None:
        if self.lanes + int(self.express) > 1 and self.settings.gil_switch_ms > 0:
            sys.setswitchinterval(self.settings.gil_switch_ms / 1000.0)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        await asyncio.to_thread(self._build_base)
        self._threads = [threading.Thread(target=self._infer_loop, args=(i,), name=f"slt-infer-{i}",
                                          daemon=True) for i in range(self.lanes)]
        if self.express:
            self._threads.append(threading.Thread(target=self._infer_loop, args=(self.lanes, True),
                                                  name="slt-infer-express", daemon=True))
        for t in self._threads:
            t.start()
        self.mirror.start()
        self._probe = asyncio.create_task(self._first_generation())

    async def stop(self) -> None:
        self._stop.set()
        for req in self.batcher.stop():
            _fail(req.future, NotRunning("the service is shutting down"))
        if self._probe is not None:
            self._probe.cancel()
        for t in self._threads:
            await asyncio.to_thread(t.join, 30)
        await asyncio.to_thread(self.mirror.stop)

    def _build_base(self) -> None:
        t0 = time.monotonic()
        base = build_base(self.spec, "cpu").eval()
        sha = base_sha256(base)
        base = base.to(self.device)
        if base_sha256(base) != sha:  # the copy to the device must be exact
            raise RuntimeError(f"base changed when moved to {self.device}")
        self.base, self.base_sha = base, sha
        # a pass sets a mask's tensors on its module, so each lane has its own trace (and one
        # more for callers outside the lanes), all over the same shared, frozen tensors
        self._lane_traces = [TracedBase(base, self.spec.nz, self.device)
                             for _ in range(self.lanes + int(self.express) + 1)]
        self._params = dict(base.named_parameters())
        self._masked = prunable_names(base)
        if self.device.type == "cpu":
            self.batcher.want_spare()
        self.base_ready = True
        log.info("base %s built on %s in %.2f s: base_sha256=%s, %d inference lanes",
                 self.spec.to_json(), self.device, time.monotonic() - t0, sha, self.lanes)

    async def _first_generation(self) -> None:
        """Readiness: one real generation through the whole path (a domain if one exists)."""
        try:
            await asyncio.to_thread(self.mirror.refresh)
        except redis.RedisError as e:
            log.warning("domain registry unreadable at startup: %s", e)
        candidates = sorted(set(self.mirror.view().values()))[:1]
        for key in candidates + [BASE_KEY]:
            try:
                fut = await asyncio.to_thread(self.submit, key, 0, 2)  # may load the mask
                await asyncio.wrap_future(fut)
                self.generated_ok = True
                log.info("first generation succeeded (%s)", key[:12] or "plain base")
                return
            except Exception:
                log.exception("first generation on %s failed", key[:12] or "plain base")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def ready(self) -> bool:
        return self.base_ready and self.generated_ok and not self._stop.is_set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the inference loop from starting new steps (maintenance, tests of the queue)."""
        with self.batcher.hold():
            yield

    # masks -------------------------------------------------------------------------------

    def verify(self, mask: MaskFile) -> None:
        """Raise ForeignMaskError or MaskError unless `mask` fits the served base exactly: its
        base_sha256, and every conv weight, bias and BatchNorm statistic with its shape."""
        check_base(mask, self.base_sha)
        check_shapes(mask, self.base)

    def import_mask(self, data: bytes) -> tuple[MaskFile, bool]:
        """Verify mask bytes and publish them to the shared catalog (see MaskCache.admit)."""
        return self.masks.admit(data, self.base_sha)

    def load_mask(self, mask_id: str) -> MaskFile:
        """The mask in RAM, loaded on demand (see MaskCache.get)."""
        return self.masks.get(mask_id)

    def ram_bytes(self) -> int:
        return self.masks.bytes

    def promote(self, name: str, mask_id: str, by: str = "admin") -> dict:
        """Make `mask_id` the domain's active mask: not deleted, verified for this base
        (UnknownMask, ForeignMaskError, MaskError), and in the catalog's index (UnknownMask
        naming why; both checked again as the promotion commits)."""
        at = self.catalog.deleted_at(mask_id)
        if at is not None:
            raise UnknownMask(mask_id, str(DeletedMask(mask_id, at)))
        indexed, had_file = mask_id in self.catalog, mask_id in self.catalog.local
        try:
            self.load_mask(mask_id)  # a file of another base is a 409 whether indexed or not
        except UnknownMask:
            if indexed:  # indexed, but its file is nowhere: say so as the cache does
                raise
            raise UnknownMask(mask_id, str(UnindexedMask(mask_id))) from None
        if not indexed:  # a blob or a file alone: keep no copy of it here, promote nothing
            self.masks.evict(mask_id)
            if not had_file:
                self.catalog.drop_local(mask_id)
            raise UnknownMask(mask_id, str(UnindexedMask(mask_id)))
        try:
            return self.mirror.promote(name, mask_id, by, guard=self.catalog.promotion_guard(mask_id))
        except (DeletedMask, UnindexedMask) as e:  # deleted while we verified it
            raise UnknownMask(mask_id, str(e)) from None

    def masks_in_use(self) -> set[str]:
        """Masks a domain on this replica serves, or pins."""
        return set(self.mirror.view().values()) | self.mirror.pinned_masks()

    def _forget_deleted(self) -> None:
        """After a re-read of the registry: forget the deleted masks this host still holds in
        RAM, on the device or on disk (a deletion whose message did not reach this replica)."""
        held = sorted(set(self.masks.ids()) | set(self._cache.keys()) - {BASE_KEY})
        try:
            gone = self.catalog.deleted(held)
            self.catalog.drop_deleted_local()
        except redis.RedisError as e:
            log.warning("deleted masks not checked: %s", e)
            return
        for mask_id in gone:
            self.forget_mask(mask_id)

    def _republish(self) -> None:
        """The store lost data: publish this host's mask files again (with their evaluation
        sidecars), in a thread of its own so domain messages keep flowing meanwhile."""
        def run() -> None:
            if not self._republishing.acquire(blocking=False):
                return  # one re-publication at a time; the running one covers every file
            try:
                n = self.catalog.sync_local()
                log.warning("store loss: %d mask files of this host published again", n)
            except Exception:
                log.exception("store loss: this host's mask files not published again")
            finally:
                self._republishing.release()
        threading.Thread(target=run, name="slt-republish", daemon=True).start()

    def forget_mask(self, mask_id: str) -> None:
        """A mask deleted from the catalog: out of RAM, off the device, off this host's disk.
        Requests already queued keep their own reference and finish."""
        self.masks.evict(mask_id)
        self._cache.remove(mask_id)
        self.metrics.cache_bytes.set(self._cache.bytes)
        self.metrics.cache_entries.set(len(self._cache))
        try:
            self.catalog.drop_local(mask_id)
        except OSError as e:
            log.warning("could not remove this host's file of deleted mask %s: %s", mask_id[:12], e)
        log.info("mask %s forgotten (deleted from the catalog)", mask_id[:12])

    def stats(self) -> dict:
        """Serving state in numbers, for /readyz and the benchmark."""
        return {"base_sha256": self.base_sha, "device": str(self.device),
                "torch_threads": self.lanes, "intra_op_threads": 1, "masks_in_ram": len(self.masks),
                "masks_ram_bytes": self.masks.bytes, "masks_ram_budget": self.masks.budget,
                "resident_masks": len(self._cache), "resident_bytes": self._cache.bytes,
                "queue_images": self.batcher.depth(), "domains_known": self.mirror.known()}

    def is_resident(self, mask_id: str | None) -> bool:
        return bool(mask_id) and mask_id in self._cache

    def queue_depth(self) -> int:
        return self.batcher.depth()

    # domains -----------------------------------------------------------------------------

    def _on_domain_change(self, change: Change) -> None:
        """Warm a hot domain's new mask (pinned, or its old mask on the device), so a promotion
        does not make the next request pay the swap. Runs in the thread that applied it."""
        old, new = change.old, change.new
        if new.mask_id is None:
            return
        moved = old is None or old.mask_id != new.mask_id or old.pinned != new.pinned
        hot = new.pinned or (old is not None and self.is_resident(old.mask_id))
        if not (moved and hot):
            return
        try:
            mask = self.masks.get(new.mask_id)
        except (EngineError, MaskError, redis.RedisError) as e:
            log.warning("domain %s promoted to mask %s, which this host cannot serve: %s",
                        change.name, new.mask_id[:12], e)
            return
        self.batcher.warm(mask)

    def domains_view(self) -> dict[str, str]:
        return self.mirror.view()

    # requests ----------------------------------------------------------------------------

    async def generate(self, domain: str, seed: int, n: int,
                       z: np.ndarray | None = None) -> Generation:
        """n images (indices 0..n-1) of `seed` under the domain's active mask; with `z`
        (float32 [n,nz]), of those latents instead (an interpolation: `seed` is its first)."""
        mask_id = self.mirror.active(domain) or await asyncio.to_thread(self.mirror.resolve, domain)
        mask = self.masks.peek(mask_id)
        if mask is None and not self.is_resident(mask_id):  # resident weights need no bits in RAM
            mask = await asyncio.to_thread(self._mask_of, domain, mask_id)
        images = await asyncio.wrap_future(self._enqueue(mask_id, mask, seed, n, z))
        self.metrics.images.labels(domain).inc(n)
        return Generation(domain, mask_id, self.base_sha, seed, list(range(n)), images)

    def _mask_of(self, domain: str, mask_id: str) -> MaskFile:
        """The domain's mask, its errors told in the domain's terms. Blocking."""
        try:
            return self.masks.get(mask_id)
        except UnknownMask:
            raise MaskUnavailable(f"domain {domain!r} points to mask {mask_id}, which is neither "
                                  f"in this host's catalog nor in the shared store") from None
        except ForeignMaskError as e:
            raise ForeignBase(f"domain {domain!r} points to a mask of another base: {e}") from None
        except MaskError as e:
            raise MaskUnavailable(f"domain {domain!r}: its mask cannot be served: {e}") from None

    def submit(self, mask: MaskFile | str, seed: int, n: int) -> concurrent.futures.Future:
        """Queue images 0..n-1 of `seed` under `mask` (a MaskFile, a mask_id loaded if need be,
        or BASE_KEY); the future gives uint8 [n,H,W,3]. Raises Saturated when the queue is
        full. Thread-safe; blocking only to load a mask given by id."""
        if isinstance(mask, str):
            mask = None if mask == BASE_KEY else self.masks.get(mask)
        return self._enqueue(mask.mask_id if mask else BASE_KEY, mask, seed, n)

    def _enqueue(self, mask_id: str, mask: MaskFile | None, seed: int, n: int,
                 z: np.ndarray | None = None) -> concurrent.futures.Future:
        if not self.base_ready or self._stop.is_set():
            raise NotRunning("the generator is not running")
        return self.batcher.submit(mask_id, mask, seed, n, z=z)

    # inference ---------------------------------------------------------------------------

    def _infer_loop(self, index: int = 0, express: bool = False) -> None:
        _lane.index = index
        # one intra-op thread in each lane: the served arithmetic is the same at every core
        # count (module docstring); set here, in the thread, as PyTorch keeps it per thread
        torch.set_num_threads(1)
        self.intra_op_threads.add(torch.get_num_threads())
        while True:
            if express:
                chunks = self.batcher.next_express_work()
                work = None if chunks is None else ("step", chunks)
            else:
                work = self.batcher.next_work()
            if work is None:
                return
            kind, arg = work
            try:
                if kind == "step":
                    self._step(arg)  # type: ignore[arg-type]
                elif kind == "spare":
                    self._make_spare()
                else:
                    self._weights(arg.mask_id, self._keep(), arg)  # type: ignore[union-attr]
            except Exception:  # the loop must survive anything one step does
                log.exception("inference %s failed", kind)

    def _keep(self) -> set[str]:
        """Masks whose weights must stay: pinned domains, and every step a lane is running."""
        with self._in_use_lock:
            busy = set(self._in_use)
        return self.mirror.pinned_masks() | busy

    @contextmanager
    def _running(self, masks: set[str]) -> Iterator[None]:
        with self._in_use_lock:
            self._in_use.update(masks)
        try:
            yield
        finally:
            with self._in_use_lock:
                self._in_use.subtract(masks)
                for m in masks:
                    if self._in_use[m] <= 0:
                        del self._in_use[m]

    def _step(self, chunks: list[Chunk]) -> None:
        """Run a step's chunks by mask, in the round robin's order (as take() gave them), in
        forward passes of at most `slice_images`; between passes, if a request of a mask that has
        no pass left in this step is waiting, the chunks not yet run go back to the batcher, so
        it waits one pass, not a whole step. (Not the smallest group first: with a give-back
        after nearly every pass, the mask with the longest backlog would always be last and
        never run.) On a CPU a step is one mask's pass (Batcher.one_mask_steps)."""
        if not chunks:
            return
        groups: dict[str, list[Chunk]] = {}
        for c in chunks:
            groups.setdefault(c[0].mask_id, []).append(c)
        with self._running(set(groups)):
            self._run_passes(groups)

    def _run_passes(self, groups: dict[str, list[Chunk]]) -> None:
        t0 = time.perf_counter()
        passes = [(mask_id, part) for mask_id, group in groups.items()
                  for part in _slices(group, self.slice_images)]
        total = 0
        for i, (mask_id, part) in enumerate(passes):
            if i and self.batcher.others_waiting({m for m, _ in passes[i:]}):
                self.batcher.give_back([c for _, rest in passes[i:] for c in rest])
                break
            try:
                weights = self._weights(mask_id, self._keep(), part[0][0].mask)
                z = torch.cat([latents(r.seed, start, c, self.spec.nz) if r.z is None
                               else torch.from_numpy(r.z[start:start + c]) for r, start, c in part])
                t_pass = time.perf_counter()
                images = to_uint8(self._forward(weights, z))
                self.batcher.record(len(z), time.perf_counter() - t_pass)
            except Exception as e:
                log.exception("generation failed for mask %s", mask_id[:12] or "base")
                self.batcher.dropped(part)
                for r, _, _ in part:
                    _fail(r.future, GenerationFailed(f"generation failed: {type(e).__name__}"))
                continue
            off = 0
            for r, start, c in part:
                r.images[start:start + c] = images[off:off + c]
                off += c
                if self.batcher.written(r, c):
                    _resolve(r.future, r.images)
            total += off
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_images.observe(total)
        self.metrics.batch_domains.observe(len(groups))

    def _forward(self, weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Run the base with `weights` on z [b,nz]; never at batch 1 (see module docstring).
        On CUDA every pass has the same shape (max_batch), so cuDNN picks the same kernels."""
        b = z.shape[0]
        size = max(2, self.max_batch, b) if self.device.type == "cuda" else max(2, b)
        if size > b:
            z = torch.cat([z, z[:1].expand(size - b, -1)])
        before = torch.get_num_threads()
        if before != 1:  # a caller outside the lanes (maintenance, tests): the same arithmetic
            torch.set_num_threads(1)
        try:
            with torch.inference_mode(), torch.jit.optimized_execution(False):
                x = self._trace()(weights, z.to(self.device))
        finally:
            if before != 1:
                torch.set_num_threads(before)
        return x[:b]

    def _trace(self) -> TracedBase:
        """This lane's traced base (the last one for a caller outside the lanes)."""
        return self._lane_traces[getattr(_lane, "index", -1)]

    def _weights(self, mask_id: str, keep: set[str],
                 mask: MaskFile | None = None) -> dict[str, torch.Tensor]:
        """The mask's weights on the device: from the cache, else built (a cold switch) from
        `mask`, or from the RAM cache when none is given."""
        if mask_id == BASE_KEY:
            return {}
        weights = self._cache.get(mask_id)
        if weights is not None:
            self.metrics.cache_hits.inc()
            return weights
        mask = mask or self.masks.get(mask_id)
        with self._build:  # another lane may have built it meanwhile
            weights = self._cache.get(mask_id)
            if weights is not None:
                self.metrics.cache_hits.inc()
                return weights
            return self._build_cold(mask_id, keep | self._keep(), mask)

    def _build_cold(self, mask_id: str, keep: set[str], mask: MaskFile) -> dict[str, torch.Tensor]:
        self.metrics.cache_misses.inc()
        t0 = time.perf_counter()
        spare, self._spare = self._spare, None
        weights = self.build_weights(mask, out=spare)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.metrics.swap_seconds.observe(time.perf_counter() - t0)
        evicted = self._cache.put(mask_id, weights, weight_bytes(weights), keep)
        if evicted:  # a full cache: the next cold switch writes into memory already mapped
            self._spare = evicted[-1][1]
        elif self.device.type == "cpu":  # made ready when a lane is idle
            self.batcher.want_spare()
        self.metrics.cache_evictions.inc(len(evicted))
        self.metrics.cache_bytes.set(self._cache.bytes)
        self.metrics.cache_entries.set(len(self._cache))
        return weights

    @torch.inference_mode()
    def _make_spare(self) -> None:
        """Allocate and touch one domain's weight buffers, off the request path: a cold build
        into fresh memory pays a page fault per 4 KiB (47 MB at width 1: 30-100 ms on one core,
        more as the heap grows), one into mapped buffers about a third of that. Held beside the
        cache, as an evicted entry's buffers are (one domain's weights beyond its budget)."""
        with self._build:
            if self._spare is not None:
                return
            spare = {name: torch.empty_like(self._params[name]) for name in self._masked}
            for t in spare.values():
                t.zero_()
            self._spare = spare

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


_lane = threading.local()  # .index: which lane this thread is


def _cores() -> int:
    """CPUs this process may run on (a container's or taskset's, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _slices(group: list[Chunk], size: int) -> list[list[Chunk]]:
    """A mask's chunks cut into passes of at most `size` images (a chunk split where needed)."""
    out: list[list[Chunk]] = [[]]
    room = size
    for r, start, c in group:
        while c:
            if room == 0:
                out.append([])
                room = size
            take = min(c, room)
            out[-1].append((r, start, take))
            start, c, room = start + take, c - take, room - take
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
