"""Evaluation protocol: generated images vs real images of a split, on the FID Inception.

Both sides are uint8 RGB at the generator's 64x64 (generated ones quantised as a saved PNG),
then the Inception protocol of trainer.metrics (x-128)/128, bilinear to 299, 2048-d float64.
Real-side features are cached by dataset hash, split, n, sampling seed and embedder.
Checkpoints are chosen on `train`; numbers to report are on `heldout` (the default).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from trainer.atomic_write import atomic_open
from trainer.metrics import PR_K_KYNKAANNIEMI, compute_metrics, kid_subset_size
from trainer.metrics.embed import EvalEmbedder, load_eval_embedder
from trainer.settings import get_settings

log = logging.getLogger(__name__)
SPLITS = ("heldout", "train", "all")


def _real_indices(dataset, split: str, n: int, seed: int = 0) -> list[int]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    idx = dataset.indices(split)
    if not idx:
        raise ValueError(f"dataset {dataset.name!r} has no images in split {split!r}")
    if len(idx) > n:  # a fixed sample, so the cache and every report see the same images
        idx = sorted(np.random.default_rng(seed).choice(idx, size=n, replace=False).tolist())
    return list(idx)


def real_features(dataset, split: str, n: int, embedder: EvalEmbedder,
                  cache_dir: Path | None = None) -> np.ndarray:
    """Features of up to n real images of `split`, cached as .npy (float64, no pickle)."""
    cache_dir = Path(cache_dir or get_settings().cache_dir) / "eval"
    key = hashlib.sha256(f"{dataset.dataset_sha256}|{split}|{n}|{embedder.name}|"
                         f"{getattr(dataset, 'preprocessing', '')}|v1".encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            log.warning("unreadable feature cache %s; recomputing", path)
    idx = _real_indices(dataset, split, n)
    feats = embedder(_batched(dataset, idx), batch_size=50)
    with atomic_open(path) as f:
        np.save(f, feats, allow_pickle=False)
    return feats


def _batched(dataset, idx: list[int], batch: int = 50):
    for i in range(0, len(idx), batch):
        yield np.stack([dataset.load_uint8(j) for j in idx[i:i + batch]])


def generated_images(g, n: int, seed: int, device: str, batch: int = 50):
    """Batches of uint8 images 0..n-1 of `seed` from generator g."""
    from trainer.ticket import generate

    for start in range(0, n, batch):
        yield generate(g, seed, min(batch, n - start), start=start, batch_size=batch, device=device)


def evaluate_generator(g, dataset, n: int = 10_000, split: str = "heldout", seed: int = 0,
                       device: str = "cpu", embedder: EvalEmbedder | None = None,
                       pr_k: int = PR_K_KYNKAANNIEMI) -> dict:
    """Metrics of up to n real images of `split` against as many generated ones (n vs n: a
    small held-out split gets a matching generated side, not 10k images that FID's bias at
    unequal sizes would then depend on)."""
    embedder = embedder or load_eval_embedder("inception", device)
    real = real_features(dataset, split, n, embedder)
    fake = embedder(generated_images(g, min(n, len(real)), seed, device), batch_size=50)
    return _report(fake, real, embedder, split, seed, dataset, pr_k)


def _report(fake: np.ndarray, real: np.ndarray, embedder: EvalEmbedder, split: str, seed: int,
            dataset, pr_k: int = PR_K_KYNKAANNIEMI) -> dict:
    m = compute_metrics(fake, real, kid_subset_size=kid_subset_size(len(fake), len(real)), pr_k=pr_k)
    out = {**m, "n": int(min(len(fake), len(real))), "split": split, "seed": seed,
           "features": embedder.name, "comparable": embedder.comparable,
           "dataset": dataset.name, "dataset_sha256": dataset.dataset_sha256}
    if not embedder.comparable:
        out["note"] = embedder.note
    return out


def evaluate_mask(mask, dataset, n: int = 10_000, split: str = "heldout", seed: int = 0,
                  device: str = "cpu", embedder: EvalEmbedder | None = None, base=None,
                  pr_k: int = PR_K_KYNKAANNIEMI) -> dict:
    """Metrics of a mask file (MaskFile) on its base (`base`: trained weights it prunes)."""
    from trainer.ticket import build_ticket

    out = evaluate_generator(build_ticket(mask, device, base=base), dataset, n, split, seed, device,
                             embedder, pr_k)
    out["mask_id"] = mask.mask_id
    return out


def evaluate_images(images_dir: str | Path, dataset, n: int = 10_000, split: str = "heldout",
                    device: str = "cpu", embedder: EvalEmbedder | None = None,
                    pr_k: int = PR_K_KYNKAANNIEMI) -> dict:
    """Metrics of any folder of images (loaded as a dataset: square-cropped to 64x64)."""
    from trainer.data import open_dataset

    embedder = embedder or load_eval_embedder("inception", device)
    fakes = open_dataset(images_dir)
    idx = fakes.indices("all")[:n]
    fake = embedder(_batched(fakes, idx), batch_size=50)
    real = real_features(dataset, split, n, embedder)
    out = _report(fake, real, embedder, split, 0, dataset, pr_k)
    out["images"] = fakes.name
    return out


def evaluate_cli(a) -> dict:
    """`python -m trainer evaluate` (argparse namespace in, metrics dict out)."""
    from trainer.data import open_dataset
    from trainer.settings import resolve_device

    device = resolve_device(a.device or get_settings().device)
    dataset = open_dataset(a.dataset)
    embedder = load_eval_embedder(a.features, device)
    if a.images:
        return evaluate_images(a.images, dataset, a.n, a.split, device, embedder, a.pr_k)
    if a.weights:
        from trainer.search import weights_generator

        out = evaluate_generator(weights_generator(Path(a.weights), device), dataset, a.n, a.split,
                                 a.seed, device, embedder, a.pr_k)
        out["weights"] = str(a.weights)
        return out
    from trainer.masks import MaskCatalog, read_mask_file
    from trainer.search import weights_generator

    mask = read_mask_file(a.mask)
    base = weights_generator(Path(a.base_weights)) if getattr(a, "base_weights", None) else None
    out = evaluate_mask(mask, dataset, a.n, a.split, a.seed, device, embedder, base, a.pr_k)
    catalog = MaskCatalog(get_settings().masks_dir)
    if getattr(a, "record", False) and mask.mask_id in catalog:  # sidecar: the file never changes
        catalog.record_metrics(mask.mask_id, {f"{out['split']}": out})
    return out
