"""Evaluation metrics: FID, KID, precision/recall, density/coverage on embedded feature sets."""
from __future__ import annotations

import numpy as np

from trainer.metrics.fid import feature_stats, fid_from_features, frechet_distance, kid
from trainer.metrics.prdc import compute_prdc

__all__ = ["PR_K_KYNKAANNIEMI", "PR_K_RELEASED", "compute_metrics", "kid_subset_size", "feature_stats", "fid_from_features", "frechet_distance", "kid", "compute_prdc"]


PR_K_KYNKAANNIEMI = 3  # precision/recall neighbourhood of Kynkaanniemi et al. (2019)
PR_K_RELEASED = 5  # the paper's released code: prdc's compute_prdc(nearest_k=5) for all four


def kid_subset_size(n_fake: int, n_real: int) -> int:
    """KID subset size: 1000 (Binkowski et al.) where both sides hold 2000 or more, else half the
    smaller side, so the subsets differ and their spread (`kid_std`) means something."""
    return max(2, min(1000, min(n_fake, n_real) // 2))


def compute_metrics(fake_feats: np.ndarray, real_feats: np.ndarray, kid_subset_size: int = 1000,
                    kid_subsets: int = 100, seed: int = 0, device: str | None = None,
                    pr_k: int = PR_K_KYNKAANNIEMI) -> dict:
    """All metrics of fake vs real features [N,D], as plain JSON-ready floats and ints.

    P/R use pr_k-NN balls (3: Kynkaanniemi et al.; 5: the paper's released code, its tables)
    and D/C 5-NN balls (Naeem et al. 2020); KID uses subsets of min(kid_subset_size, n_fake,
    n_real), seeded, so small domains still get a number. `pr_k` is in the result.
    """
    fake, real = np.asarray(fake_feats, dtype=np.float64), np.asarray(real_feats, dtype=np.float64)
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"features must be [N,D] with equal D, got {fake.shape} and {real.shape}")
    kid_mean, kid_std = kid(fake, real, kid_subsets, kid_subset_size, seed=seed, device=device)
    return {
        "fid": fid_from_features(fake, real),
        "kid": kid_mean,
        "kid_std": kid_std,
        **compute_prdc(real, fake, k_pr=pr_k, k_dc=5, device=device),
        "pr_k": int(pr_k),
        "kid_subset_size": int(min(kid_subset_size, len(fake), len(real))),
        "n_fake": int(len(fake)),
        "n_real": int(len(real)),
    }
