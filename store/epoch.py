"""The shared store's identity: a marker key that vanishes when Redis loses its data.

`slt:store:epoch` holds a random id, set once by whoever finds it missing. A process that
remembers the id and later finds it gone or changed knows the store lost data (a restart
without persistence, FLUSHALL, a new SLT_REDIS_URL or DB number) and must re-publish what it
holds (its mask files, the domain records it serves). A restore from an older snapshot keeps
the marker; the domain registry tells that case by its version counter falling below what a
replica holds (see `store.domains`).
"""
from __future__ import annotations

import secrets

import redis

MARKER = "slt:store:epoch"


def current(client: redis.Redis) -> str:
    """The store's epoch id, set now if it has none (the store is new, or lost its data)."""
    client.set(MARKER, secrets.token_hex(8), nx=True)
    raw = client.get(MARKER)
    return raw.decode() if raw else current(client)  # flushed between the two calls: set again


def peek(client: redis.Redis) -> str | None:
    """The epoch id, or None if the marker is gone (the store lost its data); sets nothing."""
    raw = client.get(MARKER)
    return raw.decode() if raw else None
