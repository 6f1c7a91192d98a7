"""The service's one typed settings object (environment variables SLT_*).

What the worker needs too (home, Redis, device, base, job limits) is declared once in
`store.settings.SharedSettings`; this class adds what only the API and the launcher use.
"""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator

from store.settings import SharedSettings, parse_base

__all__ = ["Settings", "get_settings", "parse_base"]


class Settings(SharedSettings):
    admin_token: str | None = None
    host: str = "127.0.0.1"  # `python -m service` listens here
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=0, le=64)  # worker processes `make run` starts (each runs one job)
    # serving
    max_n: int = 64  # images per /generate request
    queue_limit: int = 1024  # queued images held at most (memory); 429 beyond
    # admission: a request whose estimated wait (queued images x measured seconds per image /
    # lanes) exceeds this gets 429 with Retry-After at once (0: only queue_limit bounds it).
    # A refused connection is not read for at least half of it (service.admission), so a
    # client retrying at once waits about 1.5x this in all. 700 ms cut the p99 at 256
    # connections (10 s levels) but refused more: the refusals' churn took width 1 from 34
    # to 28 images/s and refused some requests at 16 connections (docs/BENCHMARKS.md)
    max_wait_ms: float = Field(1000.0, ge=0)
    batch_window_ms: float = 5.0
    max_batch: int = 32
    # CPU forward passes of at most this many images; between passes a newly waiting domain
    # takes its turn, so a flood delays it by one pass, not a whole step (0: max_batch)
    step_slice_images: int = Field(4, ge=0)
    device_cache_bytes: int = 2 << 30  # masked weights resident on the device
    mask_ram_bytes: int = Field(256 << 20, ge=0)  # packed masks held in RAM (an LRU), loaded on demand
    # CPU inference lanes: forward passes run side by side, each on one thread (0: this
    # process's cores). Pixels do not depend on it: every pass is single-threaded
    torch_threads: int = Field(0, ge=0, le=256)
    # CPU: one lane more, for light requests alone (a mask's whole wait fits one pass, none of
    # it under way), so a light domain starts at once beside a flood's passes instead of after one
    express_lane: bool = True
    # how long a thread may hold the GIL before another waiting one gets it (Python's default 5):
    # a lane waiting to run its next small op waits this long behind the other lane's Python
    gil_switch_ms: float = Field(0.5, ge=0, le=100)
    # uploads
    max_upload_bytes: int = 512 << 20
    max_unpacked_bytes: int = 2 << 30
    max_archive_entries: int = 200_000
    # ---- exposure (issue 22)
    # a private deployment: every route but /healthz and /readyz needs `Authorization: Bearer`
    # with this token or the admin token; unset, reads (GET) are public as before
    read_token: str | None = None
    # ---- model cards (issue 24)
    # the `license` of every mask's model card (GET /masks/{id}/card): a Hub license id or `other`
    card_license: str = Field("unknown", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._+-]+$")
    # ---- live progress (issue 24)
    # how often a GET /jobs/{id}/events stream reads the job's new events from Redis
    events_poll_s: float = Field(0.5, gt=0, le=10)
    # an idle stream sends a comment line at least this often (proxies and clients keep it open)
    events_keepalive_s: float = Field(15.0, gt=0, le=300)
    # a stream closes after this long; its client reconnects with Last-Event-ID (bounds each one)
    events_max_s: float = Field(3600.0, gt=0)

    @field_validator("default_preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        from trainer.search import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose from {sorted(PRESETS)}")
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
