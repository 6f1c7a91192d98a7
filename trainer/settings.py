"""The typed settings every process builds on (SLT_HOME, the device, the base, weight files)."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.generator import BaseSpec


def parse_base(value: str | dict | None) -> BaseSpec:
    """SLT_BASE: JSON ({"width": 0.25, "init": "signed_constant", "seed": 0}) or
    `key=value` pairs (`width=0.25,init=signed_constant,seed=0`); unset means the paper's GFMN.
    The service serves this base and the CLI's base options default to it."""
    try:
        return _parse_base(value)
    except (TypeError, ValueError) as e:  # wrong types in JSON, unknown keys, bad numbers
        raise ValueError(f"SLT_BASE={value!r} is not a base ({e}); e.g. width=0.25,init=signed_constant,seed=0") from e


def _parse_base(value: str | dict | None) -> BaseSpec:
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


class TrainerSettings(BaseSettings):
    """The base of every process's settings (environment variables SLT_*): where datasets,
    masks, jobs and caches live, the device, the served base, local weight files. The worker's
    and the API's settings (store.settings.SharedSettings, service.settings.Settings) extend
    this class, so one name means the same in every process and is declared once."""

    model_config = SettingsConfigDict(env_prefix="SLT_", extra="ignore", frozen=True)

    home: Path = Path("./var")  # SLT_HOME: datasets/, masks/, jobs/, cache/
    device: str = "auto"  # SLT_DEVICE: auto | cpu | cuda
    base: str = ""  # SLT_BASE: the served base, and the CLI's default base (see parse_base)
    vgg19_weights: Path | None = None  # SLT_VGG19_WEIGHTS: local ImageNet VGG19 file
    inception_weights: Path | None = None  # SLT_INCEPTION_WEIGHTS: local FID Inception file

    @field_validator("home")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("vgg19_weights", "inception_weights")
    @classmethod
    def _user(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, v) -> str:
        return "" if v is None else v if isinstance(v, str) else json.dumps(v)

    @property
    def base_spec(self) -> BaseSpec:
        """The parsed SLT_BASE (ValueError naming the problem if it is not a base)."""
        return parse_base(self.base)

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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None):
        """Settings from `env` alone (default os.environ): a name missing there takes its
        default, never the process's own environment."""
        if env is None:
            return cls()
        kwargs = {name: env.get(f"SLT_{name.upper()}", field.get_default())
                  for name, field in cls.model_fields.items()}
        return cls(**{k: v for k, v in kwargs.items() if v is not None or k in env})


@lru_cache(maxsize=1)
def get_settings() -> TrainerSettings:
    """The process-wide settings of the trainer CLI (tests build their own)."""
    return TrainerSettings.from_env()


DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """`name` if it is auto, cpu, cuda or cuda:N, else a ValueError that says so."""
    if not DEVICE_NAME.match(name or ""):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return name


def resolve_device(name: str = "auto") -> str:
    """Map `auto` to `cuda` when a GPU is present, else `cpu`."""
    import torch

    check_device_name(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
    return name
