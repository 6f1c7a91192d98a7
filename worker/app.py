"""The Celery app (`celery -A worker.app worker`): broker and result backend on Redis.

Configured for tasks that run for hours or days: a message is acknowledged only after its
task returns (late acks), one message is reserved at a time (prefetch 1), and each worker
process runs one task (solo pool).

Redis redelivers a message that stays unacknowledged past the visibility timeout (12 h), and
a search may run far longer (SLT_JOB_TIME_LIMIT_S, 7 days by default), so a long search's
message is handed out again while it still runs. That is harmless: a delivery first takes
the job's lease (store.jobs), and a redelivered task for a job whose lease is alive, or
which has already ended, does nothing and is acknowledged.

Recovery from a worker killed outright (kill -9, a lost host) does not come from Redis or
from `task_reject_on_worker_lost`: under the solo pool the task runs in the worker process
itself, so there is no child whose loss Celery could notice, and the unacknowledged message
would only come back after the visibility timeout. It comes from the watchdog
(worker.watchdog) of any live worker: once the dead worker's lease runs out (SLT_LEASE_S,
60 s) the job goes back to `queued` and its message is sent again, to resume from the last
checkpoint. `task_reject_on_worker_lost` stays set for a worker run with a forking pool.
"""
from __future__ import annotations

from functools import lru_cache

from celery import Celery

from store.connection import CONNECT_TIMEOUT_S
from store.settings import SharedSettings, get_settings

QUEUE = "slt"
# an unacknowledged message comes back after this long; shorter than a long search, which
# the lease makes harmless (see above), and long enough that it rarely happens
VISIBILITY_TIMEOUT_S = 12 * 3600
# Redis serves priority 0 first: a search handed back by a stopping worker goes before new
# searches; one sent again after it failed (its worker lost, an error) goes behind them, so a
# job that keeps failing never holds up the rest; evaluations and statistics come last
RESUME_PRIORITY, SEARCH_PRIORITY, RETRY_PRIORITY, LOW_PRIORITY = 0, 3, 6, 9


def redis_url(settings: SharedSettings) -> str:
    """SLT_REDIS_URL, else the embedded redis of this SLT_HOME (started by `make run` or
    `python -m worker`)."""
    from store.connection import running_embedded

    url = settings.redis_url or running_embedded(settings.redis_dir)
    if not url:
        raise RuntimeError(f"SLT_REDIS_URL is not set and no embedded Redis runs for {settings.home}; "
                           "start everything with `make run`, or a worker with `python -m worker`")
    return url


def celery_config(url: str, socket_timeout_s: float) -> dict:
    """Celery's settings on broker `url`; `socket_timeout_s` (SLT_REDIS_SOCKET_TIMEOUT_S) bounds
    every call of its Redis clients, as it does for the store's own clients."""
    return dict(
        broker_url=url,
        result_backend=url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S,
                                  "socket_timeout": socket_timeout_s,
                                  "socket_connect_timeout": CONNECT_TIMEOUT_S},
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
        # task events (and the worker heartbeats `python -m worker` keeps on), so Flower and
        # `celery events` see every worker and job
        worker_send_task_events=True,
        task_send_sent_event=True,
        # every Redis connection of Celery times out instead of hanging
        redis_socket_timeout=socket_timeout_s,
        redis_socket_connect_timeout=CONNECT_TIMEOUT_S,
    )


def make_app(url: str | None = None, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app on `url`; without one, the URL is resolved from settings when first used."""
    app = Celery("slt", include=list(include), set_as_current=url is None)
    def defaults() -> dict:
        settings = get_settings()
        return celery_config(url or redis_url(settings), settings.redis_socket_timeout_s)

    app.add_defaults(defaults)
    return app


@lru_cache(maxsize=8)
def producer(url: str) -> Celery:
    """An app that only sends messages (the API, the launcher); one per broker URL."""
    return make_app(url)


app = make_app(include=("worker.tasks",))
