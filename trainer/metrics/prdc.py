"""Precision/recall (k-NN manifolds) and density/coverage (Naeem et al. 2020), chunked.

Same definitions and results as the `prdc` package, but the N x M distance matrix is never
materialised: rows are processed in chunks on the GPU when there is one, so 10k x 10k fits.
"""
from __future__ import annotations

import numpy as np
import torch

CHUNK_BYTES = 128 << 20  # one float64 distance tile per chunk (~1.6k rows at M = 10k)


def _dist(x: torch.Tensor, y: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    # euclidean as sklearn computes it: sqrt(max(|x|^2 - 2 x.y + |y|^2, 0)), float64
    d = x @ y.T  # [c,M], then in place: one tile of memory per chunk
    return d.mul_(-2).add_((x * x).sum(1, keepdim=True)).add_(yy[None]).clamp_(min=0).sqrt_()


def _rows(m: int, chunk: int | None) -> int:
    return chunk or max(1, CHUNK_BYTES // (8 * max(m, 1)))


def knn_radii(x: torch.Tensor, ks: tuple[int, ...], chunk: int | None = None) -> dict[int, torch.Tensor]:
    """Distance of each row of x [N,D] to its k-th nearest other row, for each k (self excluded)."""
    kmax = max(ks)
    if len(x) <= kmax:
        raise ValueError(f"need more than {kmax} samples for {kmax}-NN radii, got {len(x)}")
    xx = (x * x).sum(1)
    out = {k: torch.empty(len(x), dtype=x.dtype, device=x.device) for k in ks}
    c = _rows(len(x), chunk)
    for i in range(0, len(x), c):
        # the k+1 smallest include the row itself at distance ~0, as in prdc
        near = _dist(x[i:i + c], x, xx).topk(kmax + 1, dim=1, largest=False).values  # [c,kmax+1] sorted
        for k in ks:
            out[k][i:i + c] = near[:, k]
    return out


def compute_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5,
         device: str | torch.device | None = None, chunk: int | None = None) -> dict[str, float]:
    """precision, recall (k_pr-NN balls) and density, coverage (k_dc-NN balls) of fake vs real."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    r = torch.as_tensor(np.asarray(real, dtype=np.float64), device=dev)  # [N,D]
    f = torch.as_tensor(np.asarray(fake, dtype=np.float64), device=dev)  # [M,D]
    ks = tuple(sorted({k_pr, k_dc}))
    rr, fr = knn_radii(r, ks, chunk), knn_radii(f, (k_pr,), chunk)[k_pr]
    ff = (f * f).sum(1)
    in_real = torch.zeros(len(f), dtype=torch.bool, device=dev)   # fake j in some real k_pr-ball
    density = torch.zeros(len(f), dtype=torch.float64, device=dev)  # count of real k_dc-balls holding j
    recall = torch.empty(len(r), dtype=torch.bool, device=dev)    # real i in some fake k_pr-ball
    coverage = torch.empty(len(r), dtype=torch.bool, device=dev)  # real i's k_dc-ball holds a fake
    c = _rows(len(f), chunk)
    for i in range(0, len(r), c):
        d = _dist(r[i:i + c], f, ff)  # [c,M]
        in_real |= (d < rr[k_pr][i:i + c, None]).any(0)
        density += (d < rr[k_dc][i:i + c, None]).sum(0)
        recall[i:i + c] = (d < fr[None]).any(1)
        coverage[i:i + c] = d.min(1).values < rr[k_dc][i:i + c]
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(recall.double().mean()),
        "density": (1.0 / k_dc) * float(density.mean()),  # same rounding as prdc
        "coverage": float(coverage.double().mean()),
    }
