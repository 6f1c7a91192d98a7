"""The service's one typed settings object (environment variables SLT_*)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.generator import BaseSpec
from trainer.settings import TrainerSettings


def parse_base(value: str | dict | None) -> BaseSpec:
    """SLT_BASE: JSON ({"width": 0.25, "init": "signed_constant", "seed": 0}) or
    `key=value` pairs (`width=0.25,init=signed_constant,seed=0`); unset means the paper's GFMN."""
    if value is None or value == "":
        return BaseSpec()
    if isinstance(value, dict):
        return BaseSpec.from_dict(value)
    value = value.strip()
    if value.startswith("{"):
        return BaseSpec.from_dict(json.loads(value))
    d: dict = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        k, _, v = part.partition("=")
        k = k.strip().replace("base_seed", "seed")
        d[k] = v.strip() if k in ("arch", "init") else (float(v) if k == "width" else int(v))
    return BaseSpec.from_dict(d)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLT_", extra="ignore")

    home: Path = Path("./var")
    redis_url: str | None = None  # unset: embedded redis under home
    admin_token: str | None = None
    device: str = "auto"
    base: str = ""  # see parse_base
    demo: bool = False
    # serving
    max_n: int = 64  # images per /generate request
    queue_limit: int = 256  # queued images before 429
    batch_window_ms: float = 5.0
    max_batch: int = 32
    device_cache_bytes: int = 2 << 30  # masked weights resident on the device
    # uploads
    max_upload_bytes: int = 512 << 20
    max_unpacked_bytes: int = 2 << 30
    max_archive_entries: int = 200_000
    # jobs
    job_time_limit_s: int = 7 * 24 * 3600
    lease_s: float = 60.0
    worker_memory_fraction: float = Field(0.6, ge=0.05, le=1.0)  # cap of the worker on a shared GPU

    @field_validator("home")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
