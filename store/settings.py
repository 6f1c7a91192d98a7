"""Settings every worker and API process reads (environment variables SLT_*): the shared
store and jobs, on top of the trainer's (home, device, base, weight files).

One chain, one declaration per name: trainer.settings.TrainerSettings (the trainer CLI) <-
SharedSettings (a worker) <- service.settings.Settings (the API and the launcher). So SLT_HOME,
SLT_REDIS_URL, SLT_BASE, SLT_LEASE_S, ... mean the same in every process.
"""
from __future__ import annotations

import re
import urllib.parse
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from trainer.settings import TrainerSettings, parse_base  # noqa: F401 (one SLT_BASE parser for all)

# A dataset is an entry of $SLT_HOME/datasets named by this: never a path. Dots only between
# other characters ("celeba.zip"), so no "..", no hidden entries.
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
DATASET_NAME_MAX = 64


def check_dataset_name(name: str) -> str:
    if len(name or "") > DATASET_NAME_MAX or not DATASET_NAME.match(name or ""):
        raise ValueError(f"dataset name {name!r}: up to {DATASET_NAME_MAX} of A-Z a-z 0-9 _ - and "
                         "single dots between them; a name from GET /datasets, never a path")
    return name


def read_password(path: Path) -> str:
    """The first line of a password file (SLT_REDIS_PASSWORD_FILE), which must not be empty."""
    try:
        password = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"SLT_REDIS_PASSWORD_FILE={path}: cannot be read ({e.strerror})") from e
    if not password:
        raise ValueError(f"SLT_REDIS_PASSWORD_FILE={path} is empty")
    return password


def with_password(url: str, password: str) -> str:
    """`url` authenticating with `password`, unless it already names a password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url
    if parts.scheme == "unix":  # redis-py takes a socket's password as a query parameter
        query = urllib.parse.parse_qs(parts.query)
        if "password" in query:
            return url
        # appended to the text: urlunsplit would drop the empty authority of unix:///path
        return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode({'password': password})}"
    user = urllib.parse.quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class SharedSettings(TrainerSettings):
    redis_url: str | None = None  # unset: the embedded redis under home
    demo: bool = False  # queue one demo search per demo dataset on a first start
    log_level: str = "info"  # of `python -m service` and `python -m worker`
    # jobs
    job_time_limit_s: int = 7 * 24 * 3600
    lease_s: float = Field(60.0, gt=0)  # a job whose heartbeat is older than this is taken over
    worker_memory_fraction: float = Field(0.6, ge=0.05, le=1.0)  # cap of the worker on a shared GPU
    checkpoint_every_s: float = Field(60.0, gt=0)  # work lost to a crash is at most this
    default_preset: str = "fast"  # POST /masks without "preset" (checked by the API's Settings)
    # Feature extractor of every search, overriding the preset's. For tests and offline use only
    # (`random`); the API never takes it per job.
    search_features: str | None = None
    # images per side when a finished mask is evaluated (0: none); 2k keeps a CPU host responsive,
    # `python -m trainer evaluate` keeps the 10k-vs-10k protocol for reported numbers
    eval_n: int = Field(2_000, ge=0)
    # a job that fails (its worker lost, an error outside the search) this many times is failed
    max_attempts: int = Field(3, ge=1, le=100)
    # a running job whose search makes no progress this long, while its lease lives, is taken over
    stall_s: float = Field(1800.0, gt=0)
    # finished jobs keep previews, loss curves and checkpoints this long, then only the record
    job_retention_s: float = Field(7 * 24 * 3600.0, ge=0)
    # checkpoints published to the shared store (so another host resumes a job): at most this
    # often, at most this big (a bigger one stays local); 0 s: every local checkpoint
    checkpoint_publish_s: float = Field(300.0, ge=0)
    checkpoint_max_bytes: int = Field(512 << 20, ge=0)
    # uploaded datasets shared with every host, each at most this big
    shared_dataset_max_bytes: int = Field(2 << 30, ge=0)
    # Redis client timeouts: a hung server never hangs a request or a worker forever
    redis_socket_timeout_s: float = Field(30.0, gt=0)
    # large artifacts in an S3-compatible bucket instead of Redis (credentials the usual AWS way)
    s3_bucket: str | None = None
    s3_prefix: str = "slt/blobs/"
    s3_endpoint_url: str | None = None
    # a worker serves its Prometheus metrics on this port (0: off; one port per worker process)
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # ---- job lifecycle under store faults (issue 22)
    # a job step that meets a transient store fault (Redis away, an S3 5xx) retries with
    # backoff this long before the attempt is handed back, one failure counted
    store_retry_s: float = Field(900.0, ge=0)
    # a job's failures are forgotten once it runs past the iteration of the last one, at least
    # this long after it (a crash that repeats at one place, or soon after each start, is not)
    failure_decay_s: float = Field(3600.0, ge=0)
    # ---- blob collection (issue 22)
    # a blob is deleted only once unreferenced and not put again for this long
    gc_grace_s: float = Field(3600.0, gt=0)
    # no deletions this long after claiming a non-empty store, while another claim lives, or a shrink lasts
    gc_quarantine_s: float = Field(86400.0, ge=0)
    # one sweep deletes at most this many blobs (0: collection off)
    gc_max_delete: int = Field(10_000, ge=0)
    # ... and at most this fraction of the blobs present (at least one)
    gc_max_delete_fraction: float = Field(0.25, gt=0, le=1)
    # a sweep refuses when the references fell by more than this fraction since the last one
    gc_max_shrink: float = Field(0.5, ge=0, le=1)
    # ---- exposure and deployment (issue 22)
    # a file holding the Redis password (compose generates one at first start); it is put into
    # SLT_REDIS_URL when that URL carries none, so every client of the URL authenticates
    redis_password_file: Path | None = None
    # address a worker's metrics listen on: loopback unless a scraper elsewhere must reach it
    worker_metrics_host: str = "127.0.0.1"
    # ---- deletions, store loss, local caches (issue 22)
    # the most a host's $SLT_HOME/masks may take; least recently used files the shared store holds
    # are evicted (never one only this host has; masks its domains serve or pin last); 0: unbounded
    mask_disk_bytes: int = Field(8 << 30, ge=0)
    # ---- serving first on a shared host (issue 23)
    # a worker lowers its own CPU priority by this (nice): on a host that also serves, a search
    # takes the cores serving leaves idle instead of halving its throughput (0: equal footing)
    search_nice: int = Field(10, ge=0, le=19)

    @model_validator(mode="after")
    def _redis_password(self) -> SharedSettings:
        if self.redis_url and self.redis_password_file:
            # settings are frozen once built; this is part of building them
            object.__setattr__(self, "redis_url",
                               with_password(self.redis_url, read_password(self.redis_password_file)))
        return self


    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    def dataset_path(self, name: str) -> Path:
        """The dataset called `name` (checked: a name, never a path); it may not exist."""
        return self.datasets_dir / check_dataset_name(name)


@lru_cache(maxsize=1)
def get_settings() -> SharedSettings:
    return SharedSettings()
