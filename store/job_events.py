"""A job's live events: a Redis stream `slt:job:<id>:events` beside its record.

The worker appends an event each time it writes progress or enters a phase (as lease holder,
after the record accepted the write), so every API replica reads the same events in the same
order, under the stream's own ids (`<ms>-<seq>`, rising): those are the SSE event ids a client
resumes after (Last-Event-ID). The stream is capped (EVENTS_KEPT, approximately: Redis trims
whole nodes) and deleted with the job's record (it is one of store.lifecycle.PARTS). The end of
a job is read from its record, not from the stream, since other writers (the API's cancel of a
queued job, the watchdog) end jobs too.
"""
from __future__ import annotations

import json
import logging

import redis

from store.lifecycle import TERMINAL, job_key

log = logging.getLogger(__name__)

EVENTS_KEPT = 2000  # events kept per job: the last ~15 minutes of a search at 2 events/s
PROGRESS, PHASE = "progress", "phase"
START_ID = "0-0"  # before any event: a cursor that reads the stream from its beginning

Event = tuple[str, str, dict]  # (stream id, kind, data)


def events_key(job_id: str) -> str:
    return job_key(job_id, "events")


class JobEvents:
    """Append to and read from jobs' event streams, on one Redis client."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def append(self, job_id: str, kind: str, data: dict) -> str:
        """Add one event; returns its id."""
        eid = self.r.xadd(events_key(job_id), {"event": kind, "data": json.dumps(data)},
                          maxlen=EVENTS_KEPT, approximate=True)
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    def try_append(self, job_id: str, kind: str, data: dict) -> None:
        """Best effort (the record already has the progress; a lost event only delays a
        follower until the next one)."""
        try:
            self.append(job_id, kind, data)
        except redis.RedisError as e:
            log.warning("job %s: %s event not written: %s", job_id, kind, e)

    def snapshot(self, job_id: str) -> tuple[str, dict | None]:
        """(id of the latest event, or START_ID; the job's record, None if there is none), the
        id read first: every event after it is read later, even one the record already shows."""
        with self.r.pipeline(transaction=True) as p:
            p.xrevrange(events_key(job_id), count=1)
            p.hgetall(job_key(job_id))
            last, raw = p.execute()
        cursor = last[0][0].decode() if last else START_ID
        return cursor, ({k.decode(): json.loads(v) for k, v in raw.items()} if raw else None)

    def poll(self, job_id: str, after: str, count: int) -> tuple[str | None, list[Event]]:
        """(the job's status now, None if it has no record; at most `count` events after
        `after`). The status is read BEFORE the events: a job seen ended has all its events
        (its worker wrote them before it ended it) in this read or the ones before."""
        with self.r.pipeline(transaction=True) as p:
            p.hget(job_key(job_id), "status")
            p.xrange(events_key(job_id), min=f"({after}", count=count)
            status, entries = p.execute()
        events = [(eid.decode(), fields[b"event"].decode(), json.loads(fields[b"data"]))
                  for eid, fields in entries]
        return (json.loads(status) if status else None), events


PROGRESS_FIELDS = ("iteration", "iterations", "progress", "loss", "lr", "eta_s", "preview_iteration",
                   "resumed_from")


def progress_event(fields: dict) -> dict:
    """A progress event's data from the fields a worker wrote to the record (preview_iteration
    only when this write carried a new preview; resumed_from on a resumed run's first write)."""
    return {k: fields[k] for k in PROGRESS_FIELDS if k in fields}


def ended(status: str | None) -> bool:
    return status is not None and status in TERMINAL
