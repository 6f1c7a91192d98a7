"""Moment matching of perceptual features (GFMN's loss, the paper's Eq. 3), with the Adam
moving average (AMA).

Per matched layer l with F_l features, batch moments of the fake features
    mu_f = mean_b phi(x_b),  var_f = sum_b (phi(x_b) - mu_f)^2 / (B - 1)   (unbiased, as released;
                                                                           / B when `unbiased=False`)
are matched to the cached real moments (mu_r, var_r, the same estimator). The paper's loss is
    L = sum_l [ ||mu_r - mu_f||^2 + ||var_r - var_f||^2 ]   (reduction "sum": Eq. 3, one sum over
                                                             every feature of every layer)
This project's own variant for short CPU budgets (presets demo and fast) takes a per-layer MEAN
over features and measures each layer in units of its real scale s_l^2 = mean_f (mu_r^2 + var_r):
    L = sum_l [ mean_f (mu_r - mu_f)^2 / s_l^2 + w_var mean_f (var_r - var_f)^2 / s_l^4 ]
With AMA (GFMN, Santos et al. 2019) the noisy batch differences d = mu_r - mu_f (and the
same for var) are replaced by a moving average v kept by Adam on 1/2 ||v - d||^2:
    g_t = v_{t-1} - d_t
    m_t = b1 m_{t-1} + (1 - b1) g_t,          u_t = b2 u_{t-1} + (1 - b2) g_t^2
    v_t = v_{t-1} - lr * (m_t / (1 - b1^t)) / (sqrt(u_t / (1 - b2^t)) + eps)
and the surrogate minimised by the scores is  S = -R_l(2 v_t * mu_f)  (and its var twin), with R
the reduction above, whose gradient -2 v_t dmu_f/dtheta is dL/dtheta with d_t replaced by v_t.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from trainer.stats import Moments

REDUCTIONS = ("sum", "layer-mean")


def objective_record(reduction: str, layer_norm: bool, var_weight: float, unbiased: bool,
                     ama: bool, ama_lr: float) -> dict:
    """What a search optimised, as recorded in every mask (`objective` metadata)."""
    if reduction == "sum" and not layer_norm and var_weight == 1.0:
        name = "eq3"  # the paper's Eq. 3 exactly
    elif reduction == "layer-mean" and layer_norm:
        name = "layer-normalised"  # this project's addition (presets demo, fast)
    else:
        name = "custom"
    return {"name": name, "reduction": reduction, "layer_norm": bool(layer_norm),
            "var_weight": float(var_weight), "variance": "unbiased" if unbiased else "population",
            "ama": bool(ama), "ama_lr": float(ama_lr) if ama else None}


class AdamMovingAverage(nn.Module):
    """v tracks a noisy target by Adam steps on 1/2 ||v - target||^2 (the update above)."""

    def __init__(self, size: int, lr: float = 1e-5, betas: tuple[float, float] = (0.5, 0.999),
                 eps: float = 1e-8):
        super().__init__()
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        for name in ("v", "m", "u"):
            self.register_buffer(name, torch.zeros(size))
        self.register_buffer("t", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, target: torch.Tensor) -> torch.Tensor:
        self.t += 1
        t = int(self.t)
        g = self.v - target
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.u.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        mhat = self.m / (1 - self.b1 ** t)
        uhat = self.u / (1 - self.b2 ** t)
        self.v.sub_(self.lr * mhat / (uhat.sqrt() + self.eps))
        return self.v


class _BatchMoments(torch.autograd.Function):
    """Per-feature batch mean and variance of f [B, F] (two-pass), with the gradient written
    out: d mu / d f = 1/B and d var / d f = 2 (f - mu) / (B - correction). The same values as
    f.mean(0) and f.var(0), in fewer passes over the features: CPU torch reduces a [B, F]
    tensor over its short batch dim 3-4x slower inside var, and autograd would keep two copies."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, correction: int) -> tuple[torch.Tensor, torch.Tensor]:
        mu = f.mean(0)
        d = f - mu
        var = (d * d).sum(0) / (f.shape[0] - correction)
        ctx.save_for_backward(d)
        ctx.scale = 2.0 / (f.shape[0] - correction)
        return mu, var

    @staticmethod
    def backward(ctx, g_mu: torch.Tensor | None, g_var: torch.Tensor | None):
        (d,) = ctx.saved_tensors
        grad = d * (g_var * ctx.scale) if g_var is not None else torch.zeros_like(d)
        if g_mu is not None:
            grad = grad + g_mu / d.shape[0]
        return grad, None


def batch_moments(f: torch.Tensor, correction: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) over dim 0 of f [B, F]; `correction` 1: unbiased."""
    return _BatchMoments.apply(f, correction)


class MomentMatching(nn.Module):
    """The score function: feature moments of fakes against cached real moments."""

    def __init__(self, real: Moments, ama: bool = True, ama_lr: float = 1e-5,
                 ama_betas: tuple[float, float] = (0.5, 0.999), layer_norm: bool = False,
                 var_weight: float = 1.0, reduction: str = "sum", unbiased: bool = True):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if unbiased and real.n < 2:
            raise ValueError("an unbiased real variance needs at least two real images")
        self.n_layers, self.reduction, self.unbiased = len(real.mean), reduction, unbiased
        self.record = objective_record(reduction, layer_norm, var_weight, unbiased, ama, ama_lr)
        to_unbiased = real.n / (real.n - 1) if unbiased else 1.0  # Moments hold the population form
        for i, (mu, var) in enumerate(zip(real.mean, real.var)):
            self.register_buffer(f"mu_r{i}", mu.float())
            self.register_buffer(f"var_r{i}", (var.double() * to_unbiased).float())
            # layer_norm: measure each layer in units of its real features' scale s^2 = mean(mu^2 + var),
            # mean term / s^2 and variance term / s^4, so no layer dominates by its activation size
            s2 = float((mu.double() ** 2 + var.double()).mean().clamp_min(1e-12)) if layer_norm else 1.0
            self.register_buffer(f"w_mu{i}", torch.tensor(1.0 / s2))
            self.register_buffer(f"w_var{i}", torch.tensor(var_weight / s2 ** 2))
        self.ama = nn.ModuleList(
            [AdamMovingAverage(int(mu.numel()), ama_lr, ama_betas) for mu in real.mean for _ in (0, 1)]
        ) if ama else None

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum() if self.reduction == "sum" else x.mean()

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """feats: per layer [B,C,H,W]. Returns (loss to backpropagate, plain loss L as float)."""
        assert len(feats) == self.n_layers, f"{len(feats)} feature layers, expected {self.n_layers}"
        surrogate, plain = 0.0, 0.0
        for i, f in enumerate(feats):
            f = f.float().flatten(1)  # [B, F_l]; moments in fp32 even under autocast
            mu_f, var_f = batch_moments(f, 1 if self.unbiased else 0)
            mu_r, var_r = getattr(self, f"mu_r{i}"), getattr(self, f"var_r{i}")
            w_mu, w_var = getattr(self, f"w_mu{i}"), getattr(self, f"w_var{i}")
            d_mu, d_var = mu_r - mu_f, var_r - var_f
            layer = w_mu * self._reduce(d_mu ** 2) + w_var * self._reduce(d_var ** 2)
            plain = plain + layer.detach()
            if self.ama is None:
                surrogate = surrogate + layer
            else:
                v_mu = self.ama[2 * i].update(d_mu.detach())
                v_var = self.ama[2 * i + 1].update(d_var.detach())
                surrogate = surrogate - (w_mu * self._reduce(2 * v_mu * mu_f)
                                         + w_var * self._reduce(2 * v_var * var_f))
        return surrogate, float(plain)
