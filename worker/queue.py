"""Sending search jobs to the workers, and seeing which jobs have a message in the broker."""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict

import redis
from celery import Celery

from store.jobs import JobStore
from store.settings import SharedSettings
from trainer.search import config_from
from worker.app import QUEUE, RESUME_PRIORITY, RETRY_PRIORITY, SEARCH_PRIORITY

log = logging.getLogger(__name__)

SEARCH_TASK = "slt.search_mask"
STATS_TASK = "slt.dataset_stats"
EVALUATE_TASK = "slt.evaluate_mask"
JOB_HEADER = "slt_job"  # message header naming the job, so the broker's queue can be read back


def search_config(preset: str | None, overrides: dict, settings: SharedSettings) -> dict:
    """The full search settings of a new job: a preset, the caller's overrides and the
    operator's (checkpoint interval, feature override). Fixed at submission, so every attempt
    of the job, on any worker, resumes its checkpoint with exactly the same settings.
    ValueError for an unknown preset or settings that do not combine."""
    extra: dict = {"checkpoint_every_s": settings.checkpoint_every_s}
    if settings.search_features:
        extra["features"] = settings.search_features
    return asdict(config_from(preset, **{**overrides, **extra}))


PRIORITY = {"new": SEARCH_PRIORITY, "handback": RESUME_PRIORITY, "failure": RETRY_PRIORITY}


def send_search(app: Celery, store: JobStore, job_id: str, after: str = "new") -> str:
    """Send the message that runs a job: `after` "new" (a new job), "handback" (handed back by
    a stopping worker: goes first) or "failure" (goes behind every job that has not failed)."""
    task_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    app.send_task(SEARCH_TASK, args=[job_id], task_id=task_id, queue=QUEUE,
                  priority=PRIORITY[after], headers={JOB_HEADER: job_id})
    store.set_fields(job_id, enqueued=time.time(), task_id=task_id)
    return task_id


def submit_search(app: Celery, store: JobStore, settings: SharedSettings, *, domain: str,
                  dataset: str, preset: str | None, overrides: dict, promote: bool) -> dict:
    """Record a new search job on the served base and send it; ValueError for bad settings."""
    config = search_config(preset, overrides, settings)
    job = store.create(domain=domain, dataset=dataset, preset=preset, config=config,
                       base=json.loads(settings.base_spec.to_json()), promote=promote,
                       time_limit_s=settings.job_time_limit_s)
    send_search(app, store, job["job_id"])
    return job


def pending_job_ids(client: redis.Redis, stale_after_s: float) -> set[str] | None:
    """Jobs whose message waits in the queue, or was taken by a worker within `stale_after_s`
    (a live worker takes the job's lease right after it takes the message). None when the
    broker's lists cannot be read, so the caller assumes every message is still there.

    This reads kombu's Redis layout: a list per queue (and per priority, `<queue>\\x06\\x16<n>`)
    of JSON messages, and the hash `unacked` of [message, exchange, routing key] with their
    delivery times in the sorted set `unacked_index`.
    """
    try:
        out: set[str] = set()
        for key in [QUEUE] + [f"{QUEUE}\x06\x16{p}" for p in (3, 6, 9)]:  # kombu's priority steps
            for raw in client.lrange(key, 0, -1):
                out.add(json.loads(raw)["headers"].get(JOB_HEADER))
        since = time.time() - stale_after_s
        fresh = {tag for tag, ts in client.zrange("unacked_index", 0, -1, withscores=True) if ts >= since}
        for tag, raw in client.hgetall("unacked").items():
            if tag in fresh:
                out.add(json.loads(raw)[0]["headers"].get(JOB_HEADER))
        out.discard(None)
        return out
    except (redis.RedisError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        log.warning("cannot read the broker's queue (%s); lost messages are not resent this time", e)
        return None
