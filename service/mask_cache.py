"""Packed masks in RAM: an LRU bounded in bytes, filled on demand from the catalog (this host's
file, else the shared store) and verified against the served base.

A mask is about 1 bit per weight, so ten thousand domains do not fit in RAM at once, and none
is loaded at start. Eviction only drops the cache's reference: a queued request holds its own
`MaskFile`, so a mask never vanishes under a request that uses it.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from service.errors import UnknownMask
from service.metrics import ServingMetrics
from store.catalog import DeletedMask, SharedCatalog, decode_untrusted
from trainer.masks import MaskError, MaskFile

log = logging.getLogger(__name__)

REFUSED_MEMO = 4096  # ids known not to fit the served base (content-addressed: never changes)


def ram_bytes(mask: MaskFile) -> int:
    """What a mask holds in RAM: its packed bits and BatchNorm statistics."""
    return sum(a.nbytes for a in mask.packed.values()) + sum(a.nbytes for a in mask.bn.values())


class MaskCache:
    """mask_id -> MaskFile, least recently used dropped first once over `budget_bytes`."""

    def __init__(self, catalog: SharedCatalog, verify: Callable[[MaskFile], None],
                 budget_bytes: int, metrics: ServingMetrics | None = None):
        self.catalog, self.verify, self.budget = catalog, verify, budget_bytes
        self.metrics = metrics
        self._entries: OrderedDict[str, MaskFile] = OrderedDict()
        self._bytes = 0
        self._refused: OrderedDict[str, MaskError] = OrderedDict()
        self._loading: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    # reading -----------------------------------------------------------------------------

    def peek(self, mask_id: str) -> MaskFile | None:
        """The mask if it is in RAM (counted as a use), else None; never loads."""
        with self._lock:
            mask = self._entries.get(mask_id)
            if mask is not None:
                self._entries.move_to_end(mask_id)
            return mask

    def get(self, mask_id: str) -> MaskFile:
        """The mask, loaded and verified if it is not in RAM. Raises UnknownMask,
        ForeignMaskError or MaskError (and redis errors while fetching a blob). Blocking."""
        mask = self.peek(mask_id)
        if mask is not None:
            return mask
        with self._lock:
            refused = self._refused.get(mask_id)
            if refused is not None:  # a fresh error each time: a kept one would pile up tracebacks
                raise type(refused)(str(refused))
            fut = self._loading.get(mask_id)
            owner = fut is None
            if owner:  # one load per id; concurrent callers wait for it
                fut = self._loading[mask_id] = concurrent.futures.Future()
        if not owner:
            return fut.result()
        try:
            mask = self._load(mask_id)
        except BaseException as e:
            fut.set_exception(e)
            raise
        else:
            fut.set_result(mask)
            return mask
        finally:
            with self._lock:
                self._loading.pop(mask_id, None)

    def _load(self, mask_id: str) -> MaskFile:
        had_file = mask_id in self.catalog.local
        try:
            mask = self.catalog.read(mask_id)
        except DeletedMask as e:  # its tombstone: this host's copy is gone too
            raise UnknownMask(mask_id, str(e)) from None
        except KeyError:
            raise UnknownMask(mask_id) from None
        try:
            self.verify(mask)
        except MaskError as e:
            if not had_file:  # fetched just now: keep no copy of a file this host refuses
                self.catalog.drop_local(mask_id)
            with self._lock:
                self._refused[mask_id] = type(e)(str(e))  # without the frames of this call
                while len(self._refused) > REFUSED_MEMO:
                    self._refused.popitem(last=False)
            raise
        return self.put(mask)

    def file(self, mask_id: str) -> bytes:
        """The mask file's bytes (this host's copy, else the shared store's); UnknownMask."""
        try:
            return self.catalog.bytes(mask_id)
        except DeletedMask as e:
            self.evict(mask_id)
            raise UnknownMask(mask_id, str(e)) from None
        except KeyError:
            raise UnknownMask(mask_id) from None

    def refusal(self, mask_id: str) -> MaskError | None:
        """Why this host refused the mask, if it tried and did."""
        with self._lock:
            return self._refused.get(mask_id)

    # writing -----------------------------------------------------------------------------

    def admit(self, data: bytes, base_sha: str) -> tuple[MaskFile, bool]:
        """Verify uploaded bytes in full (format, base, every layer's shape), publish them to
        the shared catalog and hold them here; also says whether the catalog had them. Any
        defect is a MaskError (ForeignMaskError for another base). An admin's import is an
        explicit act: it lifts the tombstone of a mask deleted before. Blocking."""
        mask = decode_untrusted(data)
        self.verify(mask)
        _, existed = self.catalog.publish(data, base_sha, mask, lift_tombstone=True)
        return self.put(mask), existed

    def put(self, mask: MaskFile) -> MaskFile:
        """Hold a verified mask, then drop the least recently used ones beyond the budget (never
        the one just put, so a mask larger than the budget is still served)."""
        with self._lock:
            held = self._entries.get(mask.mask_id)
            if held is not None:
                self._entries.move_to_end(mask.mask_id)
                return held
            self._entries[mask.mask_id] = mask
            self._bytes += ram_bytes(mask)
            while self._bytes > self.budget and len(self._entries) > 1:
                _, victim = self._entries.popitem(last=False)
                self._bytes -= ram_bytes(victim)
            self._report_locked()
            return mask

    def evict(self, mask_id: str) -> None:
        with self._lock:
            mask = self._entries.pop(mask_id, None)
            if mask is not None:
                self._bytes -= ram_bytes(mask)
            self._refused.pop(mask_id, None)
            self._report_locked()

    def _report_locked(self) -> None:
        if self.metrics is not None:
            self.metrics.masks_in_ram.set(len(self._entries))
            self.metrics.masks_ram_bytes.set(self._bytes)

    # numbers -----------------------------------------------------------------------------

    def __contains__(self, mask_id: str) -> bool:
        with self._lock:
            return mask_id in self._entries

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes
