"""Frechet Inception Distance and Kernel Inception Distance on feature sets, in float64."""
from __future__ import annotations

import numpy as np
import torch


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D,D] of features [N,D], float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N>=2, D], got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    # symmetric square root via eigh; tiny negative eigenvalues are round-off of a PSD matrix
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((s1 s2)^(1/2)) for PSD s1, s2, as the nuclear norm of s2^(1/2) s1^(1/2).

    (s1 s2)^(1/2) has the eigenvalues of (s1^(1/2) s2 s1^(1/2))^(1/2), i.e. the singular values of
    s2^(1/2) s1^(1/2). Unlike scipy.linalg.sqrtm of the non-symmetric s1 s2, this stays real and
    accurate for rank-deficient covariances (N < D): no square root of round-off-sized eigenvalues.
    """
    return float(np.linalg.svd(_sqrt_psd(s2) @ _sqrt_psd(s1), compute_uv=False).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)), float64."""
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, s1, s2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets [N,D] and [M,D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        device: str | torch.device | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel
    k(x, y) = (x.y / D + 1)^3, averaged over random subsets. Returns (mean, std over subsets)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(a)} and {len(b)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
    d = a.shape[1]
    rng = np.random.default_rng(seed)  # numpy draws: the same subsets on any device
    vals = []
    for _ in range(subsets):
        x = ta[torch.from_numpy(rng.choice(len(a), m, replace=False)).to(dev)]  # [m,D]
        y = tb[torch.from_numpy(rng.choice(len(b), m, replace=False)).to(dev)]
        kxx, kyy, kxy = ((u @ v.T / d + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))  # [m,m]
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        vals.append(float(off - 2 * kxy.mean()))
    return float(np.mean(vals)), float(np.std(vals))
