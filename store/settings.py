"""Settings every process reads (environment variables SLT_*): the shared store, jobs, the base.

The service's `Settings` extends this class with what only the API needs, so one name
(SLT_HOME, SLT_REDIS_URL, SLT_BASE, SLT_LEASE_S, ...) means the same in every process.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.generator import BaseSpec
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


class SharedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLT_", extra="ignore")

    home: Path = Path("./var")
    redis_url: str | None = None  # unset: the embedded redis under home
    device: str = "auto"  # auto | cpu | cuda
    base: str = ""  # see parse_base
    demo: bool = False  # queue one demo search per demo dataset on a first start
    log_level: str = "info"  # of `python -m service` and `python -m worker`
    # jobs
    job_time_limit_s: int = 7 * 24 * 3600
    lease_s: float = Field(60.0, gt=0)  # a job whose heartbeat is older than this is taken over
    worker_memory_fraction: float = Field(0.6, ge=0.05, le=1.0)  # cap of the worker on a shared GPU
    checkpoint_every_s: float = Field(60.0, gt=0)  # work lost to a crash is at most this
    default_preset: str = "fast"  # POST /masks without "preset" (trainer.search.PRESETS)
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
    # ---- deletions, store loss, local caches (issue 22)
    # the most a host's $SLT_HOME/masks may take; least recently used files the shared store holds
    # are evicted (never one only this host has; masks its domains serve or pin last); 0: unbounded
    mask_disk_bytes: int = Field(8 << 30, ge=0)

    @field_validator("home")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("default_preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        from trainer.search import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose from {sorted(PRESETS)}")
        return v

    @property
    def base_spec(self) -> BaseSpec:
        return parse_base(self.base)

    @property
    def trainer(self) -> TrainerSettings:
        return TrainerSettings.from_env({"SLT_HOME": str(self.home), "SLT_DEVICE": self.device})

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def masks_dir(self) -> Path:
        return self.home / "masks"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    def dataset_path(self, name: str) -> Path:
        """The dataset called `name` (checked: a name, never a path); it may not exist."""
        return self.datasets_dir / check_dataset_name(name)


@lru_cache(maxsize=1)
def get_settings() -> SharedSettings:
    return SharedSettings()
