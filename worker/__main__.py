"""`python -m worker`: one Celery worker process that runs one search at a time.

Concurrency is by processes (run more of them, on this or other hosts): the solo pool runs the
task in this process, so CUDA and PyTorch's threads never meet a fork, and `kill -9` of this
process is the whole worker (its job is resumed elsewhere from its checkpoint).
Without SLT_REDIS_URL it uses the embedded Redis of $SLT_HOME, starting one if none runs.
"""
from __future__ import annotations

import logging
import os
import socket
import sys

from store.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedded = None
    url = settings.redis_url
    if not url:
        from store.connection import local_redis

        url, embedded = local_redis(settings.redis_dir)
    if settings.search_nice:  # after Redis starts (it keeps its priority); PyTorch's pool inherits it
        os.nice(settings.search_nice)
    from worker.app import app, celery_config

    app.conf.update(celery_config(url, settings.redis_socket_timeout_s))
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--loglevel={settings.log_level.upper()}",
                         "--without-gossip", "--without-mingle",
                         "-n", f"slt-{os.getpid()}@{socket.gethostname()}", *(argv or [])])
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
