"""This replica's view of the domain registry: name -> active mask and pinned flag, kept by a
pub/sub listener thread (its own connection, reconnecting with backoff, a full re-read every
`refresh_s` in case a message was lost) and by the admin routes' own writes.

Every registry record carries a `version` (missing: 0, a record written before versions). A
record is applied only if it is newer than the one held, a deletion included (its tombstone
keeps its version), so a route's reply and a pub/sub message may arrive in any order: the view
ends on the registry's newest record. Unversioned records (both 0) replace each other, as
before versions existed.

A store loss (the `store.epoch` marker gone or changed, or the version counter below what is
held here: a FLUSHALL, a restart without persistence, a restore from an older snapshot) is
checked for every second and before each re-read. Then the records held here are written back
(`DomainRegistry.restore`: only over nothing or older), the counter is raised to the highest
version held, so later changes are newer than anything a replica serves, and `on_store_loss`
re-publishes this host's mask files. A domain missing from the registry in a lost store is
never taken for a deletion.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from service.errors import InUse, UnknownDomain
from store import epoch
from store.connection import connect
from store.domains import CHANNEL, DomainRegistry, Guard

log = logging.getLogger(__name__)

REFRESH_S = 30.0
STORE_CHECK_S = 1.0  # how often the listener looks for a store loss (a GET of the marker, one of the counter)


@dataclass(frozen=True)
class Held:
    """What this replica holds for one domain; `mask_id` None is a deletion's tombstone."""

    mask_id: str | None
    pinned: bool
    version: int


@dataclass(frozen=True)
class Change:
    """A domain's state moved from `old` to `new` here (either may be a tombstone or None)."""

    name: str
    old: Held | None
    new: Held


def newer(rec_version: int, held: Held | None) -> bool:
    """Whether a record of `rec_version` may replace `held`."""
    if held is None:
        return True
    return rec_version > held.version or rec_version == held.version == 0


class DomainMirror:
    """Local, versioned view of the registry; calls `on_change` for every applied change and
    `on_mask_deleted` when the catalog announces a deleted mask (outside its lock)."""

    def __init__(self, registry: DomainRegistry, redis_url: str | None = None,
                 on_change: Callable[[Change], None] | None = None,
                 on_mask_deleted: Callable[[str], None] | None = None,
                 refresh_s: float = REFRESH_S, socket_timeout_s: float = 30.0,
                 on_store_loss: Callable[[], None] | None = None,
                 on_refresh: Callable[[], None] | None = None):
        """`socket_timeout_s`: of the listener's own connection (SLT_REDIS_SOCKET_TIMEOUT_S);
        `on_store_loss`: called (in the listener thread) once the records held here are back
        in a store that had lost them; `on_refresh`: after each full re-read."""
        self.registry, self.redis_url, self.refresh_s = registry, redis_url, refresh_s
        self.socket_timeout_s = socket_timeout_s
        self.on_change = on_change or (lambda change: None)
        self.on_mask_deleted = on_mask_deleted or (lambda mask_id: None)
        self.on_store_loss = on_store_loss or (lambda: None)
        self.on_refresh = on_refresh or (lambda: None)
        self._held: dict[str, Held] = {}
        self._records: dict[str, dict] = {}  # the last live record applied, to write back after a loss
        self._epoch: str | None = None  # the store's marker as last seen here
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = False  # subscribed now (the listener's connection is up)
        self.listener_client: redis.Redis | None = None  # the listener's own connection

    # the view ----------------------------------------------------------------------------

    def apply(self, rec: dict | None) -> bool:
        """Take a registry record (or a deleted record, `"deleted": true`) if it is newer than
        what is held; True if it was applied."""
        if not rec or not rec.get("name"):
            return False
        name, version = rec["name"], int(rec.get("version") or 0)
        deleted = bool(rec.get("deleted"))
        if not deleted and not rec.get("mask_id"):
            return False
        new = Held(None if deleted else rec["mask_id"], False if deleted else bool(rec.get("pinned")),
                   version)
        with self._lock:
            old = self._held.get(name)
            if not newer(version, old):
                return False
            self._held[name] = new
            if deleted:
                self._records.pop(name, None)
            else:
                self._records[name] = json.loads(json.dumps(rec))
        if old is None or old.mask_id != new.mask_id:
            log.info("domain %s -> %s (version %d)", name,
                     f"mask {new.mask_id[:12]}" if new.mask_id else "deleted", version)
        self.on_change(Change(name, old, new))
        return True

    def active(self, name: str) -> str | None:
        with self._lock:
            held = self._held.get(name)
        return held.mask_id if held else None

    def held(self, name: str) -> Held | None:
        with self._lock:
            return self._held.get(name)

    def view(self) -> dict[str, str]:
        """Live domains -> active mask_id."""
        with self._lock:
            return {n: h.mask_id for n, h in self._held.items() if h.mask_id}

    def pinned_masks(self) -> set[str]:
        with self._lock:
            return {h.mask_id for h in self._held.values() if h.pinned and h.mask_id}

    def highest_version(self) -> int:
        """The newest version held here (0: none); the registry takes no version below it."""
        with self._lock:
            return max((h.version for h in self._held.values()), default=0)

    def known(self) -> int:
        """Live domains this replica can resolve without Redis."""
        with self._lock:
            return sum(1 for h in self._held.values() if h.mask_id)

    def resolve(self, name: str) -> str:
        """The domain's active mask_id: the local view, else the registry (UnknownDomain if
        it has none; redis errors if it cannot be read). Blocking on a miss."""
        mask_id = self.active(name)
        if mask_id:
            return mask_id
        rec = self.registry.get(name)
        if not rec or not rec.get("mask_id"):
            raise UnknownDomain(name, "GET /domains lists the served ones")
        self.apply(rec)
        return self.active(name) or rec["mask_id"]

    # writes through this replica (the admin routes) ---------------------------------------

    def promote(self, name: str, mask_id: str, by: str = "admin", guard: Guard | None = None) -> dict:
        rec = self.registry.promote(name, mask_id, by, guard)
        self.apply(rec)  # here at once; the others by pub/sub
        return rec

    def set_pinned(self, name: str, pinned: bool) -> dict:
        try:
            rec = self.registry.set_pinned(name, pinned)
        except KeyError:
            raise UnknownDomain(name, "give a mask_id to create it") from None
        self.apply(rec)
        return rec

    def delete(self, name: str) -> dict:
        rec = self.registry.delete(name)
        if rec is None:
            raise UnknownDomain(name)
        self.apply(rec)
        return rec

    def release_mask(self, mask_id: str, force: bool) -> list[dict]:
        """Before a mask is deleted: InUse if a domain serves it or may roll back to it, unless
        `force`, which takes it out of every domain (a domain serving it rolls back, or is
        deleted with no other entry); returns the changed and deleted records."""
        refs = self.registry.references(mask_id)
        if not (refs["active"] or refs["history"]):
            return []
        if not force:
            parts = []
            if refs["active"]:
                parts.append(f"served by domain(s) {', '.join(sorted(refs['active']))}")
            if refs["history"]:
                parts.append(f"in the history (a rollback target) of {', '.join(sorted(refs['history']))}")
            raise InUse(f"mask {mask_id} is {' and '.join(parts)}; DELETE with ?force=true "
                        "rolls those domains back and deletes it")
        changed = self.registry.forget_mask(mask_id)
        for rec in changed:
            self.apply(rec)
        return changed

    # keeping up with the registry ---------------------------------------------------------

    # a store that lost its data -----------------------------------------------------------

    def _store_lost(self, registry: DomainRegistry) -> bool:
        """Whether the store lost data since this replica last looked: its marker gone or
        changed, or its version counter below the newest version held here."""
        if self._epoch is not None and epoch.peek(registry.r) != self._epoch:
            return True
        top = self.highest_version()
        return bool(top) and registry.version() < top

    def check_store(self, registry: DomainRegistry | None = None) -> bool:
        """Look for a store loss and, on one, write back what is held here (see the module
        docstring); True if there was one."""
        registry = registry or self.registry
        lost = self._store_lost(registry)
        if lost:
            self._recover(registry)
        if lost or self._epoch is None:  # the marker set again, or first seen
            self._epoch = epoch.current(registry.r)
        if lost:
            self.on_store_loss()
        return lost

    def _recover(self, registry: DomainRegistry) -> None:
        with self._lock:
            held = dict(self._held)
            records = {n: dict(r) for n, r in self._records.items()}
        top = max((h.version for h in held.values()), default=0)
        registry.raise_version(top)
        restored = 0
        for name, h in held.items():
            if h.mask_id is None:
                rec = {"name": name, "version": h.version, "deleted": True}
            else:
                rec = {**records.get(name, {"name": name, "history": []}),
                       "name": name, "mask_id": h.mask_id, "pinned": h.pinned, "version": h.version}
            restored += registry.restore(rec)
        log.warning("the shared store lost data (marker or versions gone): %d domain records written "
                    "back from this replica, versions raised to %d", restored, top)

    def refresh(self, registry: DomainRegistry | None = None) -> None:
        """Re-read every record; a domain held here but gone from the registry was deleted while
        no message reached us (dropped unless a newer record arrived meanwhile), unless the
        store lost its data meanwhile (then it is written back, not dropped)."""
        registry = registry or self.registry
        self.check_store(registry)
        with self._lock:
            before = dict(self._held)
        recs = registry.all()
        for rec in recs:
            self.apply(rec)
        if self._store_lost(registry):  # lost while we read: what is missing was not deleted
            self.check_store(registry)
            return
        present = {r.get("name") for r in recs}
        gone = []
        with self._lock:
            for name, held in before.items():
                if name not in present and held.mask_id and self._held.get(name) is held:
                    self._held[name] = Held(None, False, held.version)
                    gone.append((name, held))
        for name, held in gone:
            log.info("domain %s is no longer in the registry", name)
            self.on_change(Change(name, held, Held(None, False, held.version)))
        self.on_refresh()

    def on_message(self, data: bytes, registry: DomainRegistry) -> None:
        """One pub/sub message: a domain's new version (fetched from the registry, the truth),
        a domain's deletion, or a mask's deletion."""
        try:
            msg = json.loads(data)
            if "mask" in msg:
                if msg.get("deleted"):
                    self.on_mask_deleted(str(msg["mask"]))
                return
            name, version = str(msg["domain"]), int(msg.get("version") or 0)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring malformed domain message %r: %s", data[:200], e)
            return
        if msg.get("deleted"):
            self.apply({"name": name, "version": version, "deleted": True})
            return
        with self._lock:
            held = self._held.get(name)
        if held is not None and version and not newer(version, held):
            return  # already applied (by the route that made it, or a re-read)
        self.apply(registry.get(name))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="slt-domains", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _listen(self) -> None:
        """Pub/sub on `slt:domains` with a connection of its own; reconnects with backoff."""
        delay = 0.5
        while not self._stop.is_set():
            client = None
            try:
                client = (connect(self.redis_url, self.socket_timeout_s) if self.redis_url
                          else self.registry.r)
                self.listener_client = client
                registry = DomainRegistry(client)
                ps = client.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(CHANNEL)
                self.listening = True
                self.refresh(registry)  # whatever changed while we were not listening
                last = checked = time.monotonic()
                delay = 0.5
                while not self._stop.is_set():
                    msg = ps.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        self.on_message(msg["data"], registry)
                    if time.monotonic() - last > self.refresh_s:
                        self.refresh(registry)
                        last = checked = time.monotonic()
                    elif time.monotonic() - checked > STORE_CHECK_S:
                        self.check_store(registry)
                        checked = time.monotonic()
                ps.close()
            except redis.RedisError as e:
                log.warning("domain listener: %s; reconnecting in %.1f s", e, delay)
                self.listening = False
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # keep listening whatever one bad message does
                log.exception("domain listener failed; restarting")
                self.listening = False
                self._stop.wait(1.0)
            finally:
                self.listening = False
                if client is not None and self.redis_url:
                    client.close()
