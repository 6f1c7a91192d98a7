"""The trainer's typed settings, read from the environment once (SLT_HOME and weight files)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


@dataclass(frozen=True)
class TrainerSettings:
    """Where the trainer keeps datasets, masks and caches, and optional local weight files."""

    home: Path
    vgg19_weights: Path | None = None  # SLT_VGG19_WEIGHTS: local ImageNet VGG19 file
    inception_weights: Path | None = None  # SLT_INCEPTION_WEIGHTS: local FID Inception file
    device: str = "auto"  # SLT_DEVICE: auto | cpu | cuda
    base: BaseSpec = BaseSpec()  # SLT_BASE: the served base, and the CLI's default base

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def masks_dir(self) -> Path:
        return self.home / "masks"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TrainerSettings:
        env = dict(os.environ if env is None else env)
        opt = lambda name: Path(env[name]).expanduser() if env.get(name) else None  # noqa: E731
        return cls(
            home=Path(env.get("SLT_HOME") or "./var").expanduser().resolve(),
            vgg19_weights=opt("SLT_VGG19_WEIGHTS"),
            inception_weights=opt("SLT_INCEPTION_WEIGHTS"),
            device=env.get("SLT_DEVICE", "auto"),
            base=parse_base(env.get("SLT_BASE")),
        )


@lru_cache(maxsize=1)
def get_settings() -> TrainerSettings:
    """The process-wide settings (tests build their own with `TrainerSettings.from_env`)."""
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
