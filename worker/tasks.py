"""The Celery tasks, and the worker's start and stop hooks. The work itself is in runner.py."""
from __future__ import annotations

import logging
from functools import lru_cache

from celery import signals

from worker.app import app
from worker.queue import EVALUATE_TASK, SEARCH_TASK, STATS_TASK
from worker.runner import STOP, Context, SearchRun, dataset_stats, evaluate

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def context() -> Context:
    return Context.for_app(app)


# acks_late + reject_on_worker_lost: the message stays in Redis until the run returns; a
# repeated delivery is harmless because the run first takes the job's lease.
@app.task(name=SEARCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def search_mask(job_id: str) -> str:
    """Run (or resume) the search job `job_id`; its record says what and how."""
    return SearchRun(context(), job_id)()


# No result is stored: nothing reads it (the moments go to the shared store, the metrics into
# the catalog), and a result backend that nobody reads only grows.
@app.task(name=STATS_TASK, acks_late=True, ignore_result=True)
def compute_dataset_stats(dataset: str, features: str) -> dict:
    """Cache a dataset's real feature moments, so a search on it starts at once."""
    return dataset_stats(context(), dataset, features)


@app.task(name=EVALUATE_TASK, acks_late=True, ignore_result=True)
def evaluate_mask(mask_id: str, dataset: str) -> dict | None:
    """Evaluate a catalog mask against a dataset and record the metrics beside it."""
    return evaluate(context(), mask_id, dataset)


_watchdog = None


@signals.worker_ready.connect
def _on_ready(**_) -> None:
    global _watchdog
    from store.connection import redacted
    from worker.demo import queue_demo_jobs, seed_shipped_masks
    from worker.metrics import serve
    from worker.watchdog import Watchdog

    ctx = context()
    log.info("worker %s ready on %s (device %s)", ctx.owner, redacted(app.conf.broker_url), ctx.device)
    if ctx.store.ensure_indexes():
        log.info("job status indexes built for the jobs recorded before them")
    serve(ctx.settings.worker_metrics_port, ctx.settings.worker_metrics_host)
    if ctx.settings.demo:
        seed_shipped_masks(ctx)
        queue_demo_jobs(ctx)
    _watchdog = Watchdog(ctx)
    _watchdog.start()


@signals.worker_shutting_down.connect
def _on_shutdown(**_) -> None:
    # a running search stops at its next iteration and hands its job back (see runner.STOP)
    STOP.set()
    if _watchdog is not None:
        _watchdog.stop()
