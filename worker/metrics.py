"""A worker's own Prometheus metrics (SLT_WORKER_METRICS_PORT on SLT_WORKER_METRICS_HOST): search speed, jobs ended,
take-overs. Process-wide, like the worker's one search at a time."""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

ITERATIONS = Counter("slt_worker_search_iterations", "Search iterations run by this worker")
ITERATIONS_PER_S = Gauge("slt_worker_search_iterations_per_second",
                         "Iterations per second of this worker's current (or last) search")
JOBS = Counter("slt_worker_jobs_ended", "Jobs this worker ended, by status", ["status"])
TAKEOVERS = Counter("slt_worker_takeovers",
                    "Jobs this worker resumed from a checkpoint published by another worker")
REQUEUES = Counter("slt_worker_requeues",
                   "Jobs this worker's watchdog found lost or stalled and sent again, by reason",
                   ["reason"])


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose the metrics on `host`:`port` (port 0: not at all). Loopback by default: they name
    jobs and hosts, so a wider address is the operator's choice (SLT_WORKER_METRICS_HOST)."""
    if port:
        start_http_server(port, addr=host)
        log.info("worker metrics on %s:%d/metrics", host, port)
