"""Domains in Redis: name -> active mask_id, with a history (newest first), a pinned flag and
a version.

Every change takes a new version from one counter (`slt:domains:version`), larger than the
record it replaces, and is published on `slt:domains` as `{"domain", "version"}` (with
`"deleted": true` for a deletion), so an API replica applies a change at once and never lets
an older record overwrite a newer one, whatever order messages and route replies come in.
A deleted mask is announced on the same channel as `{"mask", "deleted": true}`.

Versions stay monotonic across a store loss: a registry given a `floor` (the highest version
its replica holds) raises the counter to it before it takes the next number, and a replica
that notices the loss raises it at once and writes back the records it holds (`restore`), so
a promotion made afterwards is newer than anything any replica serves.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence

import redis

CHANNEL = "slt:domains"
NAMES = "slt:domains"  # the set of domain names (a key, not the channel)
VERSION = "slt:domains:version"
DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
HISTORY = 50

# The next version, never below ARGV[1] (a floor a replica holds). KEYS: the counter.
_NEXT_VERSION = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""
# Raise the counter to at least ARGV[1]; returns it. KEYS: the counter.
_RAISE_VERSION = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]); return tonumber(ARGV[1]) end
return v
"""
# Write back a record a replica holds iff the registry has none or an older one (ARGV[2] its
# version; ARGV[1] the record, or "" for a deletion: then only an older record is removed).
# KEYS: the domain's key, the names set, the counter; ARGV[3]: the name.
_RESTORE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(cjson.decode(cur)['version'] or 0) or 0
  if v >= tonumber(ARGV[2]) then return 0 end
elseif ARGV[1] == '' then
  return 0
end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1]); redis.call('SREM', KEYS[2], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1]); redis.call('SADD', KEYS[2], ARGV[3])
end
local c = tonumber(redis.call('GET', KEYS[3]) or '0')
if c < tonumber(ARGV[2]) then redis.call('SET', KEYS[3], ARGV[2]) end
return 1
"""

# What a promotion must hold true when it commits: keys to WATCH (a change to one retries the
# transaction) and a check run on the watching pipeline that raises to refuse.
Guard = tuple[Sequence[str], Callable[[redis.client.Pipeline], None]]


def check_domain_name(name: str) -> str:
    if not DOMAIN_NAME.match(name or ""):
        raise ValueError(f"domain name {name!r}: 1-64 of a-z 0-9 _ -, starting with a letter or digit")
    return name


class DomainRegistry:
    """Active mask per domain, history, pinning; versioned, and every change published."""

    def __init__(self, client: redis.Redis, floor: Callable[[], int] | None = None):
        """`floor`: the highest version this process holds; no new version is below it."""
        self.r = client
        self.floor = floor or (lambda: 0)

    def _key(self, name: str) -> str:
        return f"slt:domain:{check_domain_name(name)}"

    def get(self, name: str) -> dict | None:
        raw = self.r.get(self._key(name))
        return _decode(raw)

    def active(self, name: str) -> str | None:
        d = self.get(name)
        return d["mask_id"] if d else None

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self.r.smembers(NAMES))

    def all(self) -> list[dict]:
        names = self.names()
        with self.r.pipeline(transaction=False) as p:
            for n in names:
                p.get(self._key(n))
            return [d for raw in p.execute() if (d := _decode(raw)) is not None]

    def _change(self, name: str, edit: Callable[[dict | None], dict | None],
                guard: Guard | None = None) -> dict | None:
        """Apply `edit` (old record or None -> new record, or None to delete) atomically, with
        a version above the old one's and the floor; publish it. Returns the new (or deleted)
        record. `guard`: checked inside the transaction (its keys watched)."""
        key = self._key(name)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, *(guard[0] if guard else ()))
                    if guard:
                        try:
                            guard[1](pipe)
                        except BaseException:
                            pipe.unwatch()
                            raise
                    old = _decode(pipe.get(key))
                    new = edit(json.loads(json.dumps(old)) if old else None)
                    if new is None and old is None:
                        pipe.unwatch()
                        return None
                    floor = max(int(old.get("version", 0)) if old else 0, self.floor())
                    # outside the transaction: a number no one else gets, above the floor
                    version = int(self.r.eval(_NEXT_VERSION, 1, VERSION, floor))
                    pipe.multi()
                    if new is None:
                        out = {**old, "version": version, "deleted": True}
                        pipe.delete(key)
                        pipe.srem(NAMES, name)
                    else:
                        out = {**new, "version": version, "updated": time.time()}
                        pipe.set(key, json.dumps(out))
                        pipe.sadd(NAMES, name)
                    pipe.publish(CHANNEL, json.dumps({"domain": name, "version": version,
                                                      **({"deleted": True} if new is None else {})}))
                    pipe.execute()
                    return out
                except redis.WatchError:
                    continue

    def promote(self, name: str, mask_id: str, by: str = "admin", guard: Guard | None = None) -> dict:
        """Make `mask_id` the domain's active mask (promote or roll back); atomic, published.
        `guard` (e.g. SharedCatalog.promotion_guard): refuses a mask not in the catalog, also
        one deleted while the promotion commits."""
        def edit(d: dict | None) -> dict:
            d = d or {"name": name, "mask_id": None, "history": [], "pinned": False}
            if d["mask_id"] != mask_id:
                d["history"] = ([{"mask_id": mask_id, "at": time.time(), "by": by}] + d["history"])[:HISTORY]
            d["mask_id"] = mask_id
            return d
        return self._change(name, edit, guard)

    def set_pinned(self, name: str, pinned: bool) -> dict:
        """KeyError if the domain does not exist."""
        def edit(d: dict | None) -> dict:
            if d is None:
                raise KeyError(name)
            return {**d, "pinned": bool(pinned)}
        return self._change(name, edit)

    def delete(self, name: str) -> dict | None:
        """Remove a domain (its masks stay in the catalog); the deleted record with the
        deletion's version, or None if there was none."""
        return self._change(name, lambda d: None)

    # ---- after a store loss -------------------------------------------------------------
    def version(self) -> int:
        """The counter: the highest version handed out (0 in a store that lost it)."""
        return int(self.r.get(VERSION) or 0)

    def raise_version(self, at_least: int) -> int:
        """Raise the counter to at least `at_least` (atomic); returns it."""
        return int(self.r.eval(_RAISE_VERSION, 1, VERSION, int(at_least)))

    def restore(self, rec: dict) -> bool:
        """Write back a record a replica holds (its version kept) iff the registry has none or
        an older one; a deleted record (`"deleted": true`) removes only an older live one. The
        counter is raised to its version. True if the registry changed."""
        name, version = check_domain_name(rec["name"]), int(rec.get("version") or 0)
        body = "" if rec.get("deleted") else json.dumps({k: v for k, v in rec.items() if k != "deleted"})
        return bool(self.r.eval(_RESTORE, 3, self._key(name), NAMES, VERSION, body, version, name))

    def references(self, mask_id: str) -> dict[str, list[str]]:
        """Domains serving `mask_id` ("active") and those that may roll back to it ("history")."""
        active, history = [], []
        for d in self.all():
            if d.get("mask_id") == mask_id:
                active.append(d["name"])
            elif any(h.get("mask_id") == mask_id for h in d.get("history", [])):
                history.append(d["name"])
        return {"active": active, "history": history}

    def referenced(self) -> set[str]:
        """Every mask a domain serves or may roll back to (a blob collection keeps them)."""
        out = set()
        for d in self.all():
            out.update(m for m in [d.get("mask_id"), *(h.get("mask_id") for h in d.get("history", []))] if m)
        return out

    def forget_mask(self, mask_id: str) -> list[dict]:
        """Drop `mask_id` from every domain (before a forced delete): out of each history; a
        domain serving it rolls back to its newest other entry, or is deleted if it has none.
        Returns the changed and the deleted records."""
        refs = self.references(mask_id)
        out = []
        for name in refs["active"] + refs["history"]:
            def edit(d: dict | None) -> dict | None:
                if d is None:
                    return None
                d["history"] = [h for h in d.get("history", []) if h.get("mask_id") != mask_id]
                if d.get("mask_id") == mask_id:
                    if not d["history"]:
                        return None
                    d["mask_id"] = d["history"][0]["mask_id"]
                return d
            rec = self._change(name, edit)
            if rec is not None:
                out.append(rec)
        return out


def _decode(raw: bytes | None) -> dict | None:
    if not raw:
        return None
    d = json.loads(raw)
    d.setdefault("version", 0)  # records written before versions
    return d
