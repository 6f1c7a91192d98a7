"""Moment matching of perceptual features (GFMN's loss), with the Adam moving average (AMA).

Per matched layer l with F_l features, batch moments of the fake features
    mu_f = mean_b phi(x_b),  var_f = mean_b (phi(x_b) - mu_f)^2        (population variance)
are matched to the cached real moments (mu_r, var_r). The plain loss is
    L = sum_l [ a_l mean_f (mu_r - mu_f)^2 + b_l mean_f (var_r - var_f)^2 ]
with a_l = b_l = 1 as published, or (layer_norm) a_l = 1/s_l^2, b_l = 1/s_l^4 where
s_l^2 = mean_f (mu_r^2 + var_r) is layer l's real feature scale.
With AMA (GFMN, Santos et al. 2019) the noisy batch differences d = mu_r - mu_f (and the
same for var) are replaced by a moving average v kept by Adam on 1/2 ||v - d||^2:
    g_t = v_{t-1} - d_t
    m_t = b1 m_{t-1} + (1 - b1) g_t,          u_t = b2 u_{t-1} + (1 - b2) g_t^2
    v_t = v_{t-1} - lr * (m_t / (1 - b1^t)) / (sqrt(u_t / (1 - b2^t)) + eps)
and the surrogate minimised by the scores is  S = -sum_l a_l mean_f (2 v_t * mu_f)  (and its
var twin with b_l), whose gradient -2 v_t dmu_f/dtheta equals dL/dtheta with d_t replaced by v_t.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from trainer.stats import Moments


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


class MomentMatching(nn.Module):
    """The score function: feature moments of fakes against cached real moments."""

    def __init__(self, real: Moments, ama: bool = True, ama_lr: float = 1e-5,
                 ama_betas: tuple[float, float] = (0.5, 0.999), layer_norm: bool = False,
                 var_weight: float = 1.0):
        super().__init__()
        self.n_layers = len(real.mean)
        for i, (mu, var) in enumerate(zip(real.mean, real.var)):
            self.register_buffer(f"mu_r{i}", mu.float())
            self.register_buffer(f"var_r{i}", var.float())
            # layer_norm: measure each layer in units of its real features' scale s^2 = mean(mu^2 + var),
            # mean term / s^2 and variance term / s^4, so no layer dominates by its activation size
            s2 = float((mu.double() ** 2 + var.double()).mean().clamp_min(1e-12)) if layer_norm else 1.0
            self.register_buffer(f"w_mu{i}", torch.tensor(1.0 / s2))
            self.register_buffer(f"w_var{i}", torch.tensor(var_weight / s2 ** 2))
        self.ama = nn.ModuleList(
            [AdamMovingAverage(int(mu.numel()), ama_lr, ama_betas) for mu in real.mean for _ in (0, 1)]
        ) if ama else None

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """feats: per layer [B,C,H,W]. Returns (loss to backpropagate, plain loss L as float)."""
        assert len(feats) == self.n_layers, f"{len(feats)} feature layers, expected {self.n_layers}"
        surrogate, plain = 0.0, 0.0
        for i, f in enumerate(feats):
            f = f.float().flatten(1)  # [B, F_l]; moments in fp32 even under autocast
            mu_f = f.mean(0)
            var_f = f.var(0, unbiased=False)
            mu_r, var_r = getattr(self, f"mu_r{i}"), getattr(self, f"var_r{i}")
            w_mu, w_var = getattr(self, f"w_mu{i}"), getattr(self, f"w_var{i}")
            d_mu, d_var = mu_r - mu_f, var_r - var_f
            layer = w_mu * (d_mu ** 2).mean() + w_var * (d_var ** 2).mean()
            plain = plain + layer.detach()
            if self.ama is None:
                surrogate = surrogate + layer
            else:
                v_mu = self.ama[2 * i].update(d_mu.detach())
                v_var = self.ama[2 * i + 1].update(d_var.detach())
                surrogate = surrogate - (w_mu * (2 * v_mu * mu_f).mean() + w_var * (2 * v_var * var_f).mean())
        return surrogate, float(plain)
