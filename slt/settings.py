"""The client's one settings object: the API's URL and the admin token (SLT_URL, SLT_ADMIN_TOKEN),
overridden by `--url` and `--token`."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLT_", extra="ignore", frozen=True)

    url: str = "http://127.0.0.1:8000"  # the API (any replica, or the load balancer in front)
    admin_token: str | None = None  # sent as `Authorization: Bearer` (admin routes; reads if private)
    http_timeout_s: float = Field(60.0, gt=0)  # per request; an event stream waits between events without limit
