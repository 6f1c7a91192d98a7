"""Real feature moments: per-feature mean and variance over a dataset's training split.

Streaming and numerically stable (per-batch float64 two-pass statistics merged with Chan et al.'s
parallel formula), so memory is bounded by one batch, never by the dataset; cached as safetensors.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm import tqdm

from trainer.atomic_write import write_atomic
from trainer.settings import get_settings

log = logging.getLogger(__name__)

MOMENTS_FORMAT = "slt-moments/1"
DEFAULT_DATA_PREPROC = "px64v1"  # used when a dataset does not name its image pipeline version


@dataclass
class Moments:
    """Per matched layer, flattened per-feature statistics (float64, CPU)."""

    mean: list[torch.Tensor]  # [F_l] each, F_l = C_l*H_l*W_l
    var: list[torch.Tensor]  # [F_l] population variance
    n: int

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> Moments:
        """A copy on `device` in `dtype` (the search matches in float32 on the GPU)."""
        return Moments([m.to(device, dtype) for m in self.mean], [v.to(device, dtype) for v in self.var],
                       self.n)


class RunningMoments:
    """Streaming per-feature mean / M2 over batches of features, merged with Chan et al. (1979).

    Values are shifted by the first batch's mean before any arithmetic (the "shifted data"
    method), so rounding scales with the features' spread, not with their offset.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: list[torch.Tensor] = []  # [F_l] float64, first batch's mean
        self.mean: list[torch.Tensor] = []  # [F_l] float64, mean of (x - shift)
        self.m2: list[torch.Tensor] = []  # [F_l] float64, sum of squared deviations

    def update(self, feats: list[torch.Tensor]) -> None:
        """Add one batch: feats[l] is [B, ...] (any trailing shape, flattened per sample)."""
        b = feats[0].shape[0]
        if b == 0:
            return
        n_new = self.n + b
        for i, f in enumerate(feats):
            f = f.detach().reshape(b, -1).to(torch.float64)  # [B,F_l]
            if self.n == 0:
                self.shift.append(f.mean(0))
            # two-pass within the batch (no sum-of-squares cancellation), population form
            var_b, mean_b = torch.var_mean(f - self.shift[i], dim=0, correction=0)  # [F_l] each
            m2_b = var_b * b
            if self.n == 0:
                self.mean.append(mean_b)
                self.m2.append(m2_b)
                continue
            delta = mean_b - self.mean[i]
            self.mean[i] = self.mean[i] + delta * (b / n_new)
            self.m2[i] = self.m2[i] + m2_b + delta.square() * (self.n * b / n_new)
        self.n = n_new

    def result(self) -> Moments:
        """The moments so far, as float64 CPU tensors."""
        if self.n == 0:
            raise ValueError("no samples seen: cannot compute moments of an empty dataset")
        return Moments([(k + m).cpu() for k, m in zip(self.shift, self.mean, strict=True)],
                       [(m2 / self.n).cpu() for m2 in self.m2], self.n)


def compute_moments(batches: Iterable[torch.Tensor], extractor: torch.nn.Module,
                    device: str | torch.device = "cpu", total: int | None = None) -> Moments:
    """Moments of `extractor`'s features over all images in `batches` ([B,3,H,W] in [-1,1])."""
    rm = RunningMoments()
    desc = f"real moments ({getattr(extractor, 'name', 'features')})"
    with torch.no_grad():
        for x in tqdm(batches, total=total, desc=desc, unit="batch", leave=False):
            rm.update(extractor(x.to(device, non_blocking=True)))
    return rm.result()


def _payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes in name order: detects corruption that still parses."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def save_moments(path: Path, m: Moments, meta: dict[str, str] | None = None) -> None:
    """Write moments as safetensors (`mean.<l>`, `var.<l>`), atomically, with n and a checksum."""
    tensors = {}
    for i, (mu, var) in enumerate(zip(m.mean, m.var, strict=True)):
        tensors[f"mean.{i:02d}"] = mu.contiguous()
        tensors[f"var.{i:02d}"] = var.contiguous()
    md = {**(meta or {}), "format": MOMENTS_FORMAT, "n": str(m.n), "layers": str(len(m.mean)),
          "payload_sha256": _payload_sha256(tensors)}
    write_atomic(Path(path), save(tensors, metadata=md))


def load_moments(path: Path) -> tuple[Moments, dict[str, str]]:
    """Read and verify a moments file; raise ValueError if it is malformed or corrupt."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
        raise ValueError(f"{path}: unreadable moments file ({e})") from e
    if md.get("format") != MOMENTS_FORMAT:
        raise ValueError(f"{path}: format {md.get('format')!r}, expected {MOMENTS_FORMAT}")
    if md.get("payload_sha256") != _payload_sha256(tensors):
        raise ValueError(f"{path}: checksum mismatch (corrupt file)")
    n_layers = int(md["layers"])
    mean = [tensors[f"mean.{i:02d}"] for i in range(n_layers)]
    var = [tensors[f"var.{i:02d}"] for i in range(n_layers)]
    if any(t.dtype != torch.float64 for t in mean + var) or len(tensors) != 2 * n_layers:
        raise ValueError(f"{path}: unexpected tensors in moments file")
    return Moments(mean, var, int(md["n"])), md


def moments_cache_path(cache_dir: Path, dataset_sha256: str, extractor_key: str, preproc: str) -> Path:
    """cache_dir/moments/<dataset_sha256[:16]>-<extractor key>-<data preprocessing>.safetensors"""
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]", "_", s)  # noqa: E731
    return Path(cache_dir) / "moments" / f"{safe(dataset_sha256[:16])}-{safe(extractor_key)}-{safe(preproc)}.safetensors"


def real_moments(dataset, extractor, batch_size: int = 64, device: str | torch.device = "cpu",
                 cache_dir: Path | None = None) -> Moments:
    """Moments of the real images of `dataset`'s train split, computed once and cached.

    Keyed by the dataset's sha256, the extractor's key (weights + preprocessing) and the dataset's
    image pipeline version (`dataset.preprocessing`, if it has one); a corrupt cache is recomputed.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else get_settings().cache_dir
    preproc = str(getattr(dataset, "preprocessing", None) or DEFAULT_DATA_PREPROC)
    path = moments_cache_path(cache_dir, dataset.dataset_sha256, extractor.key, preproc)
    n_train = len(dataset.indices("train"))
    if path.exists():
        try:
            m, md = load_moments(path)
            if md.get("extractor") != extractor.key:
                raise ValueError(f"{path}: made with extractor {md.get('extractor')!r}")
            log.info("real moments from cache %s (n=%d)", path, m.n)
            return m
        except ValueError as e:
            log.warning("%s; recomputing", e)
            path.unlink(missing_ok=True)
    log.info("computing real moments over %d train images with %s", n_train, extractor.key)
    m = compute_moments(dataset.batches(batch_size, split="train"), extractor, device,
                        total=math.ceil(n_train / batch_size))
    if m.n != n_train:
        log.warning("moments over %d images, but the train split lists %d", m.n, n_train)
    save_moments(path, m, {"dataset_sha256": dataset.dataset_sha256, "extractor": extractor.key,
                           "features": extractor.name, "preprocessing": preproc, "split": "train",
                           "n_train": str(n_train)})
    log.info("cached real moments at %s", path)
    return m
