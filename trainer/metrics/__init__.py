"""Evaluation metrics: FID, KID, precision/recall, density/coverage on embedded feature sets."""
from __future__ import annotations

import numpy as np

from trainer.metrics.fid import feature_stats, fid_from_features, frechet_distance, kid
from trainer.metrics.prdc import compute_prdc

__all__ = ["compute_metrics", "feature_stats", "fid_from_features", "frechet_distance", "kid", "compute_prdc"]


def compute_metrics(fake_feats: np.ndarray, real_feats: np.ndarray, kid_subset_size: int = 1000,
                    kid_subsets: int = 100, seed: int = 0, device: str | None = None) -> dict:
    """All metrics of fake vs real features [N,D], as plain JSON-ready floats and ints.

    P/R use 3-NN balls and D/C 5-NN balls (Naeem et al. 2020); KID uses subsets of
    min(kid_subset_size, n_fake, n_real), seeded, so small domains still get a number.
    """
    fake, real = np.asarray(fake_feats, dtype=np.float64), np.asarray(real_feats, dtype=np.float64)
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"features must be [N,D] with equal D, got {fake.shape} and {real.shape}")
    kid_mean, kid_std = kid(fake, real, kid_subsets, kid_subset_size, seed=seed, device=device)
    return {
        "fid": fid_from_features(fake, real),
        "kid": kid_mean,
        "kid_std": kid_std,
        **compute_prdc(real, fake, k_pr=3, k_dc=5, device=device),
        "n_fake": int(len(fake)),
        "n_real": int(len(real)),
    }
