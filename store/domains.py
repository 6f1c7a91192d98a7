"""Domains and mask blobs in Redis: the state every API replica and worker shares.

A domain is a name -> active mask_id, with a history (newest first) and a pinned flag.
Changes are published on `slt:domains` so every API process swaps at once. Finished masks
are also stored as content-addressed blobs, so a host without a shared disk can fetch one
by mask_id (and checks its sha256) into its own catalog.
"""
from __future__ import annotations

import hashlib
import json
import re
import time

import redis

CHANNEL = "slt:domains"
DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
HISTORY = 50


def check_domain_name(name: str) -> str:
    if not DOMAIN_NAME.match(name or ""):
        raise ValueError(f"domain name {name!r}: 1-64 of a-z 0-9 _ -, starting with a letter or digit")
    return name


class DomainRegistry:
    """Active mask per domain, history, pinning; publishes every change."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def _key(self, name: str) -> str:
        return f"slt:domain:{check_domain_name(name)}"

    def get(self, name: str) -> dict | None:
        raw = self.r.get(self._key(name))
        return json.loads(raw) if raw else None

    def active(self, name: str) -> str | None:
        d = self.get(name)
        return d["mask_id"] if d else None

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self.r.smembers("slt:domains"))

    def all(self) -> list[dict]:
        return [d for n in self.names() if (d := self.get(n)) is not None]

    def promote(self, name: str, mask_id: str, by: str = "admin") -> dict:
        """Make `mask_id` the domain's active mask (promote or roll back); atomic, published."""
        key = self._key(name)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    d = json.loads(raw) if raw else {"name": name, "mask_id": None, "history": [],
                                                     "pinned": False}
                    if d["mask_id"] != mask_id:
                        d["history"] = ([{"mask_id": mask_id, "at": time.time(), "by": by}]
                                        + d["history"])[:HISTORY]
                    d["mask_id"] = mask_id
                    d["updated"] = time.time()
                    pipe.multi()
                    pipe.set(key, json.dumps(d))
                    pipe.sadd("slt:domains", name)
                    pipe.publish(CHANNEL, json.dumps({"domain": name, "mask_id": mask_id}))
                    pipe.execute()
                    return d
                except redis.WatchError:
                    continue

    def set_pinned(self, name: str, pinned: bool) -> dict:
        key = self._key(name)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        raise KeyError(name)
                    d = json.loads(raw)
                    d["pinned"] = bool(pinned)
                    pipe.multi()
                    pipe.set(key, json.dumps(d))
                    pipe.publish(CHANNEL, json.dumps({"domain": name, "mask_id": d["mask_id"],
                                                      "pinned": d["pinned"]}))
                    pipe.execute()
                    return d
                except redis.WatchError:
                    continue


class MaskBlobs:
    """Content-addressed mask files in Redis (a few MB each), for hosts without a shared disk."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def put(self, mask_id: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != mask_id:
            raise ValueError("blob does not hash to its mask_id")
        self.r.set(f"slt:maskblob:{mask_id}", data, nx=True)

    def get(self, mask_id: str) -> bytes | None:
        data = self.r.get(f"slt:maskblob:{mask_id}")
        if data is None or hashlib.sha256(data).hexdigest() != mask_id:
            return None
        return data
