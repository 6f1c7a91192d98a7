"""Seeds and intervals: what a claim's verdict rests on.

A row of a suite (one method and its settings) runs at several search seeds on one base. Its
figure is the mean over seeds with a 95% Student-t interval; a comparison of two rows is the
paired difference over the seeds both ran (the same seed gives both the same latents and score
draws, so the pairing removes what they share); a trend (KID against k, against width) is the
per-seed least-squares slope, with its interval over seeds. A verdict says "reproduced" or
"contradicted" only when the interval excludes 0, and "not settled" otherwise.

Evaluation noise (KID over subsets of one set of images: a run's `kid_std`) and seed noise
(KID across seeds) are reported apart: the first is what re-scoring the same mask would move,
the second what running the search again would.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
EXPECT = ("lower", "higher")  # the sign the paper's claim gives the difference b - a


@dataclass(frozen=True)
class Interval:
    """A mean over n values with its two-sided Student-t interval (nan bounds when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float  # sample standard deviation (ddof=1) of the values

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4f} (1 seed)"
        return f"{self.mean:.4f} [{self.lo:.4f}, {self.hi:.4f}]"


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """mean ± t_{n-1, (1+level)/2} · s / sqrt(n) over `values` (one per seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"need one or more finite values, got {values!r}")
    m = float(x.mean())
    if len(x) < 2:
        return Interval(m, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return Interval(m, m - half, m + half, len(x), sd)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """The interval of b - a over the seeds both rows ran (seed -> value each)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    return mean_interval([b[s] - a[s] for s in seeds], level)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def slope_interval(points: Mapping[int, Sequence[tuple[float, float]]], level: float = LEVEL) -> Interval:
    """A trend over seeds: each seed's least-squares slope of y on x (its own (x, y) points),
    then the interval of those slopes. Seeds are the replicates; the points of one seed share
    its latents and score draws, so they are not independent of each other."""
    slopes = []
    for seed, pts in sorted(points.items()):
        p = np.asarray(pts, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < 2 or np.ptp(p[:, 0]) == 0:
            raise ValueError(f"seed {seed}: a slope needs two or more distinct x, got {pts!r}")
        slopes.append(_slope(p[:, 0], p[:, 1]))
    return mean_interval(slopes, level)


def verdict(iv: Interval, expect: str) -> str:
    """What a difference b - a (or a slope) with interval `iv` says of a claim that expects it
    `lower` (below 0) or `higher` (above 0)."""
    if expect not in EXPECT:
        raise ValueError(f"expect must be one of {EXPECT}, got {expect!r}")
    if not iv.excludes_zero():
        return "not settled"
    below = iv.hi < 0
    return "reproduced" if below == (expect == "lower") else "contradicted"


def noise_split(kids: Sequence[float], kid_stds: Sequence[float]) -> dict:
    """A row's two noises apart: `seed_sd`, the standard deviation of KID across seeds, and
    `eval_sd`, the root mean square of each run's KID spread over subsets of its own images."""
    k, e = np.asarray(kids, dtype=np.float64), np.asarray(kid_stds, dtype=np.float64)
    return {"seed_sd": float(k.std(ddof=1)) if len(k) > 1 else None,
            "eval_sd": float(np.sqrt(np.mean(e * e))) if len(e) else None, "seeds": int(len(k))}
