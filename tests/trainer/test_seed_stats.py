"""Intervals over seeds against scipy's t-tests and regression, and verdicts against intervals
built by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainer.seed_stats import (
    Interval,
    mean_interval,
    noise_split,
    paired_difference,
    slope_interval,
    verdict,
)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_mean_interval_is_scipys_one_sample_t_interval(n):
    x = np.random.default_rng(n).normal(0.17, 0.03, n)
    iv = mean_interval(list(x))
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert iv.n == n and iv.mean == pytest.approx(x.mean(), abs=1e-15)
    assert (iv.lo, iv.hi) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert iv.sd == pytest.approx(np.std(x, ddof=1))
    ci90 = stats.ttest_1samp(x, 0.0).confidence_interval(0.90)
    assert (mean_interval(list(x), 0.90).lo, mean_interval(list(x), 0.90).hi) == pytest.approx((ci90.low, ci90.high))


def test_mean_interval_closed_form_for_two_values():
    # n = 2: t_{1, 0.975} = tan(pi * 0.475) (the Cauchy quantile), s = |a - b| / sqrt(2)
    iv = mean_interval([0.125, 0.171])
    half = math.tan(math.pi * 0.475) * (0.046 / math.sqrt(2)) / math.sqrt(2)
    assert (iv.lo, iv.hi) == pytest.approx((0.148 - half, 0.148 + half))


def test_one_seed_has_no_interval_and_settles_nothing():
    iv = mean_interval([0.2])
    assert iv.n == 1 and math.isnan(iv.lo) and not iv.excludes_zero()
    assert verdict(iv, "lower") == "not settled"
    assert iv.as_dict()["lo"] is None and "1 seed" in str(iv)
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError):
        mean_interval([0.1, float("nan")])


def test_paired_difference_is_scipys_paired_t_interval_over_common_seeds():
    rng = np.random.default_rng(0)
    a = {s: 0.3 + rng.normal(0, 0.01) for s in range(6)}
    b = {s: a[s] - 0.1 + rng.normal(0, 0.02) for s in range(1, 5)}  # b ran seeds 1-4 only
    iv = paired_difference(a, b)
    seeds = [1, 2, 3, 4]
    ci = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).confidence_interval(0.95)
    assert iv.n == 4 and (iv.lo, iv.hi) == pytest.approx((ci.low, ci.high), rel=1e-12)
    # pairing removes what a seed shares: unpaired (Welch) is wider here
    welch = stats.ttest_ind([b[s] for s in seeds], [a[s] for s in seeds], equal_var=False).confidence_interval()
    assert iv.hi - iv.lo < welch.high - welch.low
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_slope_interval_is_the_interval_of_scipys_per_seed_regressions():
    rng = np.random.default_rng(1)
    ks = [0.05, 0.1, 0.3, 0.5, 0.9]
    pts = {s: [(k, 0.15 + 0.05 * k + rng.normal(0, 0.01)) for k in ks] for s in range(3)}
    slopes = [stats.linregress(*zip(*pts[s], strict=True)).slope for s in range(3)]
    iv = slope_interval(pts)
    ref = stats.ttest_1samp(slopes, 0.0).confidence_interval()
    assert iv.mean == pytest.approx(np.mean(slopes)) and (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high))
    with pytest.raises(ValueError, match="distinct x"):
        slope_interval({0: [(0.1, 1.0), (0.1, 2.0)]})


def test_verdicts_follow_the_interval_and_the_expected_sign():
    below, above, across = Interval(-0.1, -0.15, -0.05, 3, 0.02), Interval(0.1, 0.05, 0.15, 3, 0.02), \
        Interval(-0.01, -0.05, 0.03, 3, 0.02)
    assert verdict(below, "lower") == "reproduced" and verdict(below, "higher") == "contradicted"
    assert verdict(above, "higher") == "reproduced" and verdict(above, "lower") == "contradicted"
    assert verdict(across, "lower") == verdict(across, "higher") == "not settled"
    with pytest.raises(ValueError):
        verdict(below, "better")


def test_seed_noise_and_evaluation_noise_are_apart():
    kids, spreads = [0.171, 0.125, 0.150], [0.0034, 0.0036, 0.0030]
    n = noise_split(kids, spreads)
    assert n["seed_sd"] == pytest.approx(np.std(kids, ddof=1))
    assert n["eval_sd"] == pytest.approx(math.sqrt(sum(s * s for s in spreads) / 3))
    assert n["seeds"] == 3 and noise_split([0.1], [0.01])["seed_sd"] is None
