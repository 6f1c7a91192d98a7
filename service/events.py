"""GET /jobs/{id}/events as Server-Sent Events, read from the job's Redis stream (store.job_events),
so any replica serves any job's events.

A stream opened without Last-Event-ID starts with a `job` event (the record now, as GET
/jobs/{id} shows it); one opened with it resumes after that event, skipping none still kept.
Then `phase` and `progress` events as the worker writes them, and a last `end` event (id `end`)
with the job's end status, read from its record, after which the stream closes. A comment line
keeps an idle stream open. Each stream reads Redis every SLT_EVENTS_POLL_S (a short
non-blocking pipeline on the shared pool, so no connection is held per client) and closes after
SLT_EVENTS_MAX_S or as soon as its client is gone.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis
from starlette.requests import Request

from service.settings import Settings
from store import faults
from store.job_events import JobEvents, ended

log = logging.getLogger(__name__)

END_ID = "end"  # the last event's id: a client that resumes after it is told there is no more
BATCH = 200  # events read per poll at most (a resumed client catches up over several)
RETRY_MS = 2000  # the reconnection delay suggested to clients


def frame(event: str, data: dict, eid: str | None = None) -> str:
    """One SSE event; JSON data is a single line, so one `data:` field."""
    head = f"id: {eid}\n" if eid is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def end_data(job: dict) -> dict:
    return {k: job.get(k) for k in ("status", "mask_id", "error", "note", "iteration", "iterations",
                                    "progress", "finished")}


async def follow(request: Request, events: JobEvents, job_id: str, after: str | None,
                 settings: Settings, view: Callable[[dict], dict]) -> AsyncIterator[str]:
    """The SSE text of one job's stream (see the module docstring); `view` renders the first
    `job` event from the record."""
    started = last_write = time.monotonic()
    yield f"retry: {RETRY_MS}\n\n"
    try:
        if after is None:
            after, job = await asyncio.to_thread(events.snapshot, job_id)
            if job is None:  # deleted (retention) between the route's check and now
                return
            yield frame("job", view(job), after)
        while True:
            status, batch = await asyncio.to_thread(events.poll, job_id, after, BATCH)
            for eid, kind, data in batch:
                yield frame(kind, data, eid)
                after = eid
            if batch:
                last_write = time.monotonic()
            if status is None:
                return
            if ended(status) and len(batch) < BATCH:  # every event the job had is out
                _, record = await asyncio.to_thread(events.snapshot, job_id)
                if record is not None:
                    yield frame("end", end_data(record), END_ID)
                return
            now = time.monotonic()
            if now - started >= settings.events_max_s:
                return  # the client reconnects with the last id it saw
            if now - last_write >= settings.events_keepalive_s:
                yield ": keep-alive\n\n"
                last_write = now
            if await request.is_disconnected():
                return
            await asyncio.sleep(settings.events_poll_s)
    except redis.RedisError as e:  # the headers are out: end the stream; the client reconnects
        log.warning("job %s: event stream ended by the store: %s", job_id, faults.describe(e))
