"""Seeded initialisations that regenerate bit-exactly on any machine, thread count and library.

All randomness comes from PCG64's raw 64-bit stream (stable by NumPy's policy); the transforms
to uniform, sign and normal use only IEEE-exact operations (+ - * / sqrt, frexp) and a log
written here, so no platform libm or SIMD approximation can change a single bit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

INITS = ("signed_constant", "kaiming_normal", "xavier_uniform")
LN2 = 0.6931471805599453  # float64 nearest to ln 2


def _raw(ss: np.random.SeedSequence, n: int) -> np.ndarray:
    return np.random.PCG64(ss).random_raw(n).astype(np.uint64)


def uniform(ss: np.random.SeedSequence, n: int) -> np.ndarray:
    """n float64 in [0, 1): the top 53 bits of each raw draw."""
    return (_raw(ss, n) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of x > 0 from frexp and an atanh series: deterministic to the bit everywhere."""
    m, e = np.frexp(x)  # x = m * 2**e, m in [0.5, 1)
    t = (m - 1.0) / (m + 1.0)  # |t| <= 1/3; log m = 2 atanh t
    t2 = t * t
    acc = np.full_like(t, 1.0 / 41.0)
    for j in range(39, 0, -2):  # Horner over 1/(2j+1); 21 terms: error < 1e-19
        acc = acc * t2 + 1.0 / j
    return e.astype(np.float64) * LN2 + 2.0 * t * acc


def normal(ss: np.random.SeedSequence, n: int) -> np.ndarray:
    """n standard normal float64 by Marsaglia's polar method (no trigonometry)."""
    out, have, rng = np.empty(n), 0, np.random.PCG64(ss)
    while have < n:
        m = max(16, int((n - have) * 1.3) + 8)  # pairs to draw; acceptance is pi/4
        r = (rng.random_raw(2 * m).astype(np.uint64) >> np.uint64(11)).astype(np.float64)
        uv = r * (2.0 / 9007199254740992.0) - 1.0  # [-1, 1)
        u, v = uv[0::2], uv[1::2]
        s = u * u + v * v
        ok = (s > 0.0) & (s < 1.0)
        u, v, s = u[ok], v[ok], s[ok]
        f = np.sqrt(-2.0 * _log(s) / s)
        z = np.stack([u * f, v * f], axis=1).reshape(-1)
        take = min(n - have, z.size)
        out[have:have + take] = z[:take]
        have += take
    return out


def fan_in(param: torch.Tensor) -> int:
    """PyTorch's fan-in convention (size(1) x receptive field), as the released code uses it."""
    return int(param.shape[1] * math.prod(param.shape[2:]))


def _fan_out(param: torch.Tensor) -> int:
    return int(param.shape[0] * math.prod(param.shape[2:]))


def init_tensor(shape: tuple[int, ...], kind: str, fan: int, fan_out: int,
                ss: np.random.SeedSequence, is_bias: bool) -> np.ndarray:
    """One parameter's values as float32: weights by `kind`; biases at scale 1/sqrt(fan_in)."""
    n = math.prod(shape)
    gain = 1.0 if is_bias else math.sqrt(2.0)  # ReLU gain for weights (Kaiming)
    if kind == "signed_constant":  # {-c, +c}, c = gain / sqrt(fan_in): the paper's U_k
        c = gain / math.sqrt(fan)
        sign = (_raw(ss, n) >> np.uint64(63)).astype(np.float64) * 2.0 - 1.0
        x = sign * c
    elif kind == "kaiming_normal":  # N(0, gain^2 / fan_in): the paper's N_k
        x = normal(ss, n) * (gain / math.sqrt(fan))
    elif kind == "xavier_uniform":  # dense baseline; biases start at zero
        if is_bias:
            x = np.zeros(n)
        else:
            a = math.sqrt(6.0 / (fan + fan_out))
            x = (uniform(ss, n) * 2.0 - 1.0) * a
    else:
        raise ValueError(f"unknown init {kind!r}; choose from {INITS}")
    return x.astype(np.float32).reshape(shape)


@torch.no_grad()
def init_parameters(model: nn.Module, kind: str, seed: int) -> None:
    """Initialise every conv weight/bias from its own stream (seed, index); BN affine = (1, 0)."""
    index = 0
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.fill_(1.0)
            mod.bias.fill_(0.0)
        elif isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            w = mod.weight
            fan, fout = fan_in(w), _fan_out(w)
            for pname in ("weight", "bias"):
                p = getattr(mod, pname, None)
                if p is None:
                    continue
                ss = np.random.SeedSequence([seed, index])
                p.copy_(torch.from_numpy(init_tensor(tuple(p.shape), kind, fan, fout, ss,
                                                     pname == "bias")))
                index += 1
