"""The GFMN ResNet generator of the paper, and its frozen seeded random base.

The base is never stored: it is rebuilt from a `BaseSpec` (arch, nz, width, init, seed) and
identified by `base_sha256`, a hash of its canonical weight bytes, identical on every machine.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.init import INITS, init_parameters

ARCH = "gfmn-resnet"
FILTERS = (1024, 512, 256, 128, 64)  # times the width multiplier


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines the random base: arch, latent size, width, init, seed."""

    arch: str = ARCH
    nz: int = 100
    width: float = 1.0
    init: str = "signed_constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch != ARCH:
            raise ValueError(f"unknown arch {self.arch!r}; only {ARCH!r} is implemented")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {sorted(INITS)}")
        if not (1 <= self.nz <= 4096) or not (0 < self.width <= 4) or self.seed < 0:
            raise ValueError(f"base out of bounds: nz={self.nz} width={self.width} seed={self.seed}")

    def arch_json(self) -> str:
        """The architecture part (without init and seed), as stored in mask files."""
        return json.dumps({"arch": self.arch, "nz": self.nz, "width": self.width}, sort_keys=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> BaseSpec:
        return cls(**{k: d[k] for k in ("arch", "nz", "width", "init", "seed") if k in d})


class ResBlock(nn.Module):
    """BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus a 1x1 conv + upsample skip; doubles H and W."""

    def __init__(self, cin: int, cout: int, conv: type[nn.Conv2d] = nn.Conv2d):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv(cin, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.skip = conv(cin, cout, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,cin,H,W] -> [B,cout,2H,2W]
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        # a 1x1 conv commutes with nearest upsampling, so convolve first (4x fewer FLOPs)
        return h + F.interpolate(self.skip(x), scale_factor=2, mode="nearest")


class Generator(nn.Module):
    """z [B,nz] -> image [B,3,64,64] in [-1,1]. `conv`/`convT` let subnet.py swap in masked layers."""

    def __init__(self, nz: int = 100, width: float = 1.0,
                 conv: type[nn.Conv2d] = nn.Conv2d,
                 convT: type[nn.ConvTranspose2d] = nn.ConvTranspose2d):
        super().__init__()
        ch = [max(1, int(c * width)) for c in FILTERS]  # int(), as the released code: 1433 at 1.4
        self.nz = nz
        self.input = convT(nz, ch[0], 4, 1, 0, bias=False)  # [B,nz,1,1] -> [B,ch0,4,4]
        self.blocks = nn.ModuleList(ResBlock(a, b, conv) for a, b in zip(ch[:-1], ch[1:]))
        self.bn_out = nn.BatchNorm2d(ch[-1])
        self.output = conv(ch[-1], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.input(z.view(z.shape[0], self.nz, 1, 1))  # [B,ch0,4,4]
        for block in self.blocks:  # 4 -> 8 -> 16 -> 32 -> 64
            h = block(h)
        return torch.tanh(self.output(F.relu(self.bn_out(h))))  # [B,3,64,64]


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the conv weights and biases that masks cover (BatchNorm affine is never pruned)."""
    return [f"{m}.{p}" for m, mod in model.named_modules()
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
            for p in ("weight", "bias") if getattr(mod, p, None) is not None]


def build_base(spec: BaseSpec, device: str | torch.device = "cpu", **layers) -> Generator:
    """Build the frozen random base of `spec` (bit-exact on any machine), all parameters frozen."""
    g = Generator(spec.nz, spec.width, **layers)
    init_parameters(g, spec.init, spec.seed)
    for p in g.parameters():
        p.requires_grad_(False)
    return g.to(device)


def base_sha256(model: nn.Module) -> str:
    """sha256 over (name, shape, little-endian float32 bytes) of every parameter, in module order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if name.endswith("_scores"):  # edge-popup scores are the search's state, not the base
            continue
        a = p.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        h.update(f"{name}:{tuple(a.shape)};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def latents(seed: int, start: int, n: int, nz: int) -> torch.Tensor:
    """Latents z_i for i in [start, start+n), each drawn from (seed, i) alone: [n,nz] float32."""
    from trainer.init import normal

    zs = [normal(np.random.SeedSequence([seed, i]), nz) for i in range(start, start + n)]
    return torch.from_numpy(np.stack(zs).astype(np.float32)) if zs else torch.empty(0, nz)
