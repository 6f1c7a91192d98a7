"""The API's side of jobs: record and send a search, read records, ask for a cancel.
The search itself runs in a worker (worker.runner)."""
from __future__ import annotations

import redis

from service.errors import BROKER_ERRORS
from service.settings import Settings
from store.jobs import JobStore
from worker.app import LOW_PRIORITY, producer
from worker.queue import QUEUE, STATS_TASK, search_config, submit_search

__all__ = ["BROKER_ERRORS", "JobQueue"]


class JobQueue:
    """Job records in Redis plus a Celery producer on the same Redis."""

    def __init__(self, settings: Settings, client: redis.Redis, redis_url: str):
        self.settings = settings
        self.store = JobStore(client)
        self.app = producer(redis_url)

    def submit(self, *, domain: str, dataset: str, preset: str | None, overrides: dict,
               promote: bool) -> dict:
        """A new queued job on the served base; ValueError when the settings do not combine."""
        return submit_search(self.app, self.store, self.settings, domain=domain, dataset=dataset,
                             preset=preset or self.settings.default_preset, overrides=overrides,
                             promote=promote)

    def cancel(self, job_id: str) -> str:
        return self.store.request_cancel(job_id)

    def warm_dataset_stats(self, dataset: str) -> None:
        """Ask a worker to cache a new dataset's feature moments for the default preset, so
        the first search on it starts without that pass."""
        features = search_config(self.settings.default_preset, {}, self.settings)["features"]
        self.app.send_task(STATS_TASK, args=[dataset, features], queue=QUEUE, priority=LOW_PRIORITY)
