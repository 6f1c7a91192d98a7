"""Collecting blobs that nothing refers to any more (deleted masks, old checkpoints, chunks of
an interrupted upload), in a way that cannot delete what a deployment still needs.

A blob is deleted only when all of these hold:
- it was unreferenced in two sweeps at least `grace_s` apart (the first only remembers it in
  `slt:gc:candidates`, id -> first seen), and nobody put it within `grace_s` (every put, of an
  existing blob too, refreshes its mark: store/blobs.py), so a blob written or deduplicated
  just before the record that names it is never lost;
- this deployment owns the store. Its id lives in Redis (`slt:gc:deployment`) and each sweep
  writes a claim beside the blobs (`BlobStore.put_claim`: in the bucket, or in Redis). A claim
  of another deployment seen within `quarantine_s` means the prefix is shared, or that this
  deployment's Redis lost its keys (a flush, a restart without AOF, a new SLT_REDIS_URL or DB:
  the id is new, the old claim is its own from before): nothing is deleted;
- quarantine: a deployment that claims a store already holding blobs (after such a loss, or
  the first sweep after an upgrade) deletes nothing for `quarantine_s`, while hosts re-publish
  their masks and datasets and jobs their checkpoints. A claim made on an empty store starts
  without one. Refused sweeps record no candidates, so a grace follows the quarantine;
- the references are not empty while blobs exist, and did not shrink by more than
  `max_shrink` since the last completed sweep (its count is kept in the claim, beside the
  blobs, so a loss of Redis does not reset it). A shrink that persists for `quarantine_s` (a
  real mass delete) is accepted then;
- the sweep has not yet deleted `max_delete` blobs, nor `max_delete_fraction` of those
  present (at least one): what is left over goes in later sweeps.
Every refusal is logged with its reason and returned in the Sweep.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from store.blobs import BlobStore

log = logging.getLogger(__name__)

CANDIDATES = "slt:gc:candidates"
DEPLOYMENT = "slt:gc:deployment"  # this deployment's id; a new one after Redis lost its keys

GRACE_S = 3600.0
QUARANTINE_S = 86400.0
MAX_DELETE = 10_000
MAX_DELETE_FRACTION = 0.25
MAX_SHRINK = 0.5


@dataclass
class Sweep:
    """What one sweep did: blobs deleted, new candidates remembered, and why it deleted
    nothing if it refused (None when it ran)."""

    deleted: int = 0
    candidates: int = 0
    left_for_later: int = 0  # due, but past this sweep's cap
    refused: str | None = None


def gc_options(settings) -> dict:
    """collect_blobs' keyword arguments from the settings (SLT_GC_*)."""
    return {"grace_s": settings.gc_grace_s, "quarantine_s": settings.gc_quarantine_s,
            "max_delete": settings.gc_max_delete,
            "max_delete_fraction": settings.gc_max_delete_fraction,
            "max_shrink": settings.gc_max_shrink}


def deployment_id(client: redis.Redis) -> str:
    """This deployment's id in Redis, made on first use."""
    client.set(DEPLOYMENT, uuid.uuid4().hex, nx=True)
    return client.get(DEPLOYMENT).decode()


def _ago(now: float, t: float) -> str:
    return f"{max(0.0, now - t):.0f} s ago"


def collect_blobs(client: redis.Redis, blobs: BlobStore, referenced: Iterable[Callable[[], set[str]]],
                  grace_s: float = GRACE_S, now: float | None = None, *,
                  quarantine_s: float = QUARANTINE_S, max_delete: int = MAX_DELETE,
                  max_delete_fraction: float = MAX_DELETE_FRACTION,
                  max_shrink: float = MAX_SHRINK) -> Sweep:
    """One sweep (see the module's docstring for when it deletes)."""
    now = time.time() if now is None else now
    me = deployment_id(client)
    keep: set[str] = set()
    for source in referenced:  # before the listing: a blob put after it is a fresh candidate
        keep |= source()
    claims = blobs.claims()
    present = dict(blobs.marks())
    mine = claims.pop(me, None)
    if mine is None:
        fresh = not present and not claims
        mine = {"since": now, "fresh": fresh, "referenced": None, "shrunk_since": None}
        if not fresh:
            log.warning("blob collection: deployment %s claims a blob store that already holds %d "
                        "blobs (claims of %s): Redis lost its keys, points elsewhere, or this is "
                        "the first sweep since an upgrade; no deletions for %g s "
                        "(SLT_GC_QUARANTINE_S) while hosts re-publish", me[:8], len(present),
                        sorted(c[:8] for c in claims) or "no one", quarantine_s)
    mine["seen"] = now
    refused = _refusal(me, mine, claims, present, keep, now, quarantine_s, max_shrink)
    if refused is None:
        mine["referenced"], mine["shrunk_since"] = len(keep), None
    blobs.put_claim(me, mine)
    if refused is not None:
        log.warning("blob collection refused, nothing deleted: %s", refused)
        return Sweep(refused=refused)
    return _sweep(client, blobs, keep, present, now, grace_s,
                  min(max_delete, max(1, int(max_delete_fraction * len(present)))))


def _refusal(me: str, mine: dict, others: dict[str, dict], present: dict[str, float], keep: set[str],
             now: float, quarantine_s: float, max_shrink: float) -> str | None:
    """Why this sweep must not delete, or None."""
    live = {d: c for d, c in others.items() if now - float(c.get("seen", 0)) < quarantine_s}
    if live:
        names = ", ".join(f"{d[:8]} (swept {_ago(now, float(c.get('seen', 0)))})" for d, c in live.items())
        return (f"the blob store is also claimed by deployment(s) {names}; this is {me[:8]}. "
                "Either deployments share one bucket prefix (give each its own SLT_S3_PREFIX) or "
                "this deployment's Redis lost its keys; no deletions until those claims are "
                f"{quarantine_s:g} s old (SLT_GC_QUARANTINE_S)")
    if not mine.get("fresh") and now - float(mine["since"]) < quarantine_s:
        return (f"quarantine: deployment {me[:8]} claimed a store already holding blobs "
                f"{_ago(now, float(mine['since']))}; no deletions before {quarantine_s:g} s "
                "(SLT_GC_QUARANTINE_S), while hosts re-publish what they hold")
    if present and not keep:
        return (f"nothing is referenced while {len(present)} blobs exist (Redis emptied, or the "
                "wrong Redis?)")
    baseline = mine.get("referenced")
    if baseline is None:  # a new claim: the last completed sweep of whoever swept before
        swept = [c for c in others.values() if c.get("referenced") is not None]
        baseline = max(swept, key=lambda c: float(c.get("seen", 0)))["referenced"] if swept else None
    if baseline and len(keep) < baseline * (1 - max_shrink):
        since = mine.get("shrunk_since") or now
        mine["shrunk_since"] = since
        if now - since < quarantine_s:
            return (f"the references shrank from {baseline} to {len(keep)} since the last sweep "
                    f"(more than SLT_GC_MAX_SHRINK={max_shrink:g}); refusing for "
                    f"{quarantine_s:g} s from {_ago(now, since)} in case Redis lost data")
        log.warning("blob collection: references shrank from %d to %d and stayed so for %g s; "
                    "accepting the smaller set", baseline, len(keep), quarantine_s)
    return None


def _sweep(client: redis.Redis, blobs: BlobStore, keep: set[str], present: dict[str, float],
           now: float, grace_s: float, cap: int) -> Sweep:
    seen = {k.decode(): float(v) for k, v in client.hgetall(CANDIDATES).items()}
    out, fresh = Sweep(), {}
    for blob_id, mark in present.items():
        if blob_id in keep:
            continue
        first = seen.get(blob_id)
        if first is None:
            fresh[blob_id] = now
            continue
        if now - first < grace_s or now - mark < grace_s:
            continue
        if out.deleted >= cap:
            out.left_for_later += 1
            continue
        # asked again as it is deleted: a put since the listing keeps the blob
        if blobs.delete_if_unput_since(blob_id, now - grace_s):
            out.deleted += 1
        client.hdel(CANDIDATES, blob_id)
    gone = [b for b in seen if b in keep or b not in present]
    if gone:
        client.hdel(CANDIDATES, *gone)
    if fresh:
        client.hset(CANDIDATES, mapping=fresh)
    out.candidates = len(fresh)
    if out.deleted or out.left_for_later:
        log.info("blob collection: %d unreferenced blobs deleted, %d left for later sweeps "
                 "(the cap of one sweep)", out.deleted, out.left_for_later)
    return out
