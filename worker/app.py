"""The Celery app (`celery -A worker.app worker`): broker and result backend on Redis.

Configured for tasks that run for hours: a message is acknowledged only after its task
returns (late acks), put back if the worker process is lost, one message reserved at a time,
and a visibility timeout far longer than any job, so Redis never hands a running search to a
second worker by itself. A worker that really died is noticed sooner, by its job's lease
(worker.jobs), and its job is sent again by the watchdog (worker.watchdog).
"""
from __future__ import annotations

from functools import lru_cache

from celery import Celery

from worker.settings import WorkerSettings, get_settings

QUEUE = "slt"
VISIBILITY_TIMEOUT_S = 12 * 3600
# Redis serves priority 0 first: a search resumed after a crash or a stop goes before new
# searches, and evaluations and statistics wait behind both
RESUME_PRIORITY, SEARCH_PRIORITY, LOW_PRIORITY = 0, 3, 9


def redis_url(settings: WorkerSettings) -> str:
    """SLT_REDIS_URL, else the embedded redis of this SLT_HOME (started by `make run` or
    `python -m worker`)."""
    from worker.broker import running_embedded

    url = settings.redis_url or running_embedded(settings.redis_dir)
    if not url:
        raise RuntimeError(f"SLT_REDIS_URL is not set and no embedded Redis runs for {settings.home}; "
                           "start everything with `make run`, or a worker with `python -m worker`")
    return url


def celery_config(url: str) -> dict:
    return dict(
        broker_url=url,
        result_backend=url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        # one task per process: PyTorch and CUDA never meet a fork (`celery -A worker.app worker`
        # gets this too); more processes for more concurrency
        worker_pool="solo",
        worker_concurrency=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # job records hold what a search produced
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        worker_prefetch_multiplier=1,
        # the lease decides whether a redelivered job runs, so a lost broker connection need not
        # cancel the running search
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
    )


def make_app(url: str | None = None, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app on `url`; without one, the URL is resolved from settings when first used."""
    app = Celery("slt", include=list(include), set_as_current=url is None)
    app.add_defaults(lambda: celery_config(url or redis_url(get_settings())))
    return app


@lru_cache(maxsize=8)
def producer(url: str) -> Celery:
    """An app that only sends messages (the API, the launcher); one per broker URL."""
    return make_app(url)


app = make_app(include=("worker.tasks",))
