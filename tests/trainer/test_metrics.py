"""FID, KID and precision/recall/density/coverage against closed forms and reference code."""
from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import prdc as prdc_ref
import pytest
import scipy.linalg
import torch

from trainer.metrics import compute_metrics, feature_stats, fid_from_features, frechet_distance, kid
from trainer.metrics import prdc as prdc_mod
from trainer.metrics.prdc import compute_prdc


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_fid_diagonal_and_commuting_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    closed = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)
    q = _rotation(d, 1)  # same eigenvectors: the covariances commute, the closed form still holds
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-9)


def test_fid_random_spd_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    d = 64
    x, y = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 2 * d))
    s1, s2 = x @ x.T / (3 * d), y @ y.T / (2 * d) + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the classic formulation, a different algorithm
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_gaussian_samples():
    rng = np.random.default_rng(3)
    d, n = 8, 200_000
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    f1 = mu1 + rng.normal(size=(n, d)) * np.sqrt(a)
    f2 = mu2 + rng.normal(size=(n, d)) * np.sqrt(b)
    # exactly the closed form on the sample statistics ...
    m1, c1 = f1.mean(0), np.cov(f1, rowvar=False)
    m2, c2 = f2.mean(0), np.cov(f2, rowvar=False)
    assert fid_from_features(f1, f2) == pytest.approx(frechet_distance(m1, c1, m2, c2), rel=1e-12)
    # ... and close to the population value
    closed = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert fid_from_features(f1, f2) == pytest.approx(closed, abs=0.06)  # ~4 sigma of sampling noise


@pytest.mark.parametrize("n,d", [(500, 16), (100, 256)])  # the second is rank-deficient (N < D)
def test_fid_self_is_zero(n, d):
    f = np.random.default_rng(4).normal(size=(n, d))
    assert abs(fid_from_features(f, f)) < 1e-9
    mu, s = feature_stats(f)
    assert mu.shape == (d,) and s.shape == (d, d) and s.dtype == np.float64


def _kid_by_hand(a: np.ndarray, b: np.ndarray, subsets: int, m: int, seed: int) -> tuple[float, float]:
    # same subset draws as trainer.metrics.kid; MMD^2 written as explicit sums over pairs
    rng = np.random.default_rng(seed)
    d = a.shape[1]

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1) ** 3

    vals = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx = sum(k(x[i], x[j]) for i, j in combinations(range(m), 2)) * 2 / (m * (m - 1))
        kyy = sum(k(y[i], y[j]) for i, j in combinations(range(m), 2)) * 2 / (m * (m - 1))
        kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        vals.append(kxx + kyy - 2 * kxy)
    return float(np.mean(vals)), float(np.std(vals))


def test_kid_matches_hand_written_unbiased_mmd():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.3, 1.2, size=(30, 6))
    mean, std = kid(a, b, subsets=5, subset_size=12, seed=7, device="cpu")
    ref_mean, ref_std = _kid_by_hand(a, b, 5, 12, 7)
    assert mean == pytest.approx(ref_mean, rel=1e-10) and std == pytest.approx(ref_std, rel=1e-8)
    # subset size is capped by the smaller side
    assert kid(a, b, subsets=3, subset_size=1000, seed=1, device="cpu")[0] == pytest.approx(
        _kid_by_hand(a, b, 3, 30, 1)[0], rel=1e-10)


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    mean, std = kid(a, b, subsets=20, subset_size=500, device="cpu")
    assert abs(mean) < 3 * std / np.sqrt(20) + 1e-4
    assert kid(a, b + 0.5, subsets=20, subset_size=500, device="cpu")[0] > 10 * std


def _prdc_reference(real, fake):
    pr, dc = prdc_ref.compute_prdc(real, fake, 3), prdc_ref.compute_prdc(real, fake, 5)
    return {"precision": pr["precision"], "recall": pr["recall"],
            "density": dc["density"], "coverage": dc["coverage"]}


@pytest.mark.parametrize("n,m,d,chunk", [
    (200, 150, 8, None),   # one chunk
    (300, 257, 32, 37),    # many chunks, ragged last one
    (64, 90, 2, 1),        # one row per chunk, heavy overlap in 2-d
    (120, 120, 128, 50),
])
def test_prdc_equals_reference_package(n, m, d, chunk):
    rng = np.random.default_rng(n + m + d)
    real = rng.normal(size=(n, d))
    fake = rng.normal(0.25, 1.1, size=(m, d))
    got = compute_prdc(real, fake, device="cpu", chunk=chunk)
    ref = _prdc_reference(real, fake)
    assert got == {k: float(v) for k, v in ref.items()}
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1


def test_prdc_memory_budget_forces_chunks(monkeypatch):
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(500, 16)), rng.normal(0.2, 1, size=(400, 16))
    monkeypatch.setattr(prdc_mod, "CHUNK_BYTES", 8 * 400 * 13)  # 13 rows per tile
    calls = []
    orig = prdc_mod._dist
    monkeypatch.setattr(prdc_mod, "_dist", lambda x, y, yy: calls.append(len(x)) or orig(x, y, yy))
    got = compute_prdc(real, fake, device="cpu")
    assert max(calls) <= 13 and len(calls) > 30
    assert got == {k: float(v) for k, v in _prdc_reference(real, fake).items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prdc_and_kid_gpu_equal_cpu():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(700, 64)), rng.normal(0.2, 1, size=(600, 64))
    assert compute_prdc(real, fake, device="cuda", chunk=128) == compute_prdc(real, fake, device="cpu")
    g, c = kid(real, fake, 10, 200, device="cuda"), kid(real, fake, 10, 200, device="cpu")
    assert g == pytest.approx(c, rel=1e-9)


def test_compute_metrics_json_ready_and_deterministic():
    rng = np.random.default_rng(10)
    real, fake = rng.normal(size=(300, 24)), rng.normal(0.1, 1, size=(250, 24))
    out = compute_metrics(fake, real, kid_subset_size=100, kid_subsets=10)
    assert set(out) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
                        "n_fake", "n_real", "pr_k", "kid_subset_size"}
    assert type(out["n_fake"]) is int and out["n_fake"] == 250 and out["n_real"] == 300
    counts = ("n_fake", "n_real", "pr_k", "kid_subset_size")
    assert all(type(out[k]) is int for k in counts) and out["kid_subset_size"] == 100
    assert all(type(v) is float for k, v in out.items() if k not in counts)
    assert json.loads(json.dumps(out)) == out
    assert compute_metrics(fake, real, kid_subset_size=100, kid_subsets=10) == out
    assert out["fid"] == pytest.approx(fid_from_features(fake, real))
    with pytest.raises(ValueError):
        compute_metrics(fake, real[:, :10])


def test_precision_recall_neighbourhood_of_the_released_code():
    """pr_k=5 is prdc.compute_prdc(nearest_k=5), as the released code calls it; pr_k=3 the default."""
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(50, 8))
    five = compute_metrics(fake, real, kid_subset_size=40, kid_subsets=5, pr_k=5, device="cpu")
    ref5 = prdc_ref.compute_prdc(real, fake, 5)
    assert five["pr_k"] == 5
    assert (five["precision"], five["recall"]) == pytest.approx((ref5["precision"], ref5["recall"]))
    three = compute_metrics(fake, real, kid_subset_size=40, kid_subsets=5, device="cpu")
    ref3 = prdc_ref.compute_prdc(real, fake, 3)
    assert three["pr_k"] == 3 and three["recall"] == pytest.approx(ref3["recall"])
    assert (three["precision"], three["recall"]) != (five["precision"], five["recall"])


def test_kid_subsets_differ_so_the_spread_means_something():
    """Below 2,000 images a side, KID subsets are half the smaller side, never all of it."""
    from trainer.metrics import kid_subset_size

    assert kid_subset_size(10_000, 10_000) == 1000 and kid_subset_size(388, 388) == 194
    rng = np.random.default_rng(3)
    out = compute_metrics(rng.normal(size=(120, 6)), rng.normal(size=(100, 6)),
                          kid_subset_size=kid_subset_size(120, 100), kid_subsets=20, device="cpu")
    assert out["kid_subset_size"] == 50 and out["kid_std"] > 1e-6
