"""A ticket is the base times a mask: build it, recalibrate its BatchNorm, make images from it."""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from trainer.generator import BaseSpec, Generator, base_sha256, build_base, latents
from trainer.masks import MaskError, MaskFile, check_base, check_shapes


def spec_of(mask: MaskFile) -> BaseSpec:
    """The base a mask belongs to, from its metadata."""
    arch = json.loads(mask.meta["base_arch"])
    return BaseSpec(arch=arch["arch"], nz=int(arch["nz"]), width=float(arch["width"]),
                    init=mask.meta["init"], seed=int(mask.meta["base_seed"]))


@lru_cache(maxsize=4)
def cached_base(spec: BaseSpec) -> tuple[Generator, str]:
    """The plain base on CPU and its sha256 (building takes ~0.5 s at width 1)."""
    g = build_base(spec)
    return g, base_sha256(g)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Running mean/var of every BatchNorm, named like the module's buffers."""
    return {f"{n}.{b}": getattr(m, b).detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) for b in ("running_mean", "running_var")}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, nz: int, batches: int = 50, batch_size: int = 64,
                   seed: int = 1234, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Recompute BN running statistics of the current subnetwork as an exact average over many
    batches (momentum=None), so serving can run BN in eval mode; returns them."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for b in range(batches):
        model(latents(seed, b * batch_size, batch_size, nz).to(device))
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    return bn_buffers(model)


def build_ticket(mask: MaskFile, device: str | torch.device = "cpu",
                 spec: BaseSpec | None = None, base: Generator | None = None) -> Generator:
    """A plain generator whose weights are base x mask, BN from the mask's statistics, eval mode.
    `base` replaces the rebuilt random base for a mask that prunes trained weights."""
    spec = spec or spec_of(mask)
    if base is None:
        if mask.meta.get("base_source") == "weights":
            raise MaskError("this mask prunes a trained weights file (base "
                            f"{mask.base_sha256[:12]}…), not a random base: pass that file "
                            "with --base-weights")
        base, sha = cached_base(spec)
    else:
        sha = base_sha256(base)
    check_base(mask, sha)
    check_shapes(mask, base)
    g = Generator(spec.nz, spec.width)
    g.load_state_dict(base.state_dict())
    with torch.no_grad():
        params = dict(g.named_parameters())
        for name, m in mask.masks().items():
            params[name].mul_(m)
        buffers = dict(g.named_buffers())
        for name, v in mask.bn_stats().items():
            buffers[name].copy_(v)
    for p in g.parameters():
        p.requires_grad_(False)
    return g.eval().to(device)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1,1] -> [B,H,W,3] uint8, quantised as a saved PNG is."""
    u = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


@torch.no_grad()
def forward_images(g: Generator, z: torch.Tensor) -> torch.Tensor:
    """g(z) in eval mode with a batch of at least 2: PyTorch's CPU convolutions take another
    code path at batch 1, whose rounding would make an image depend on its batch size."""
    if z.shape[0] == 1:
        return g(torch.cat([z, z]))[:1]
    return g(z)


@torch.no_grad()
def generate(g: Generator, seed: int, n: int, start: int = 0, batch_size: int = 64,
             device: str | torch.device = "cpu") -> np.ndarray:
    """Images start..start+n-1 of `seed` as uint8 [n,64,64,3]; image i depends only on (seed, i)."""
    out = []
    for b in range(start, start + n, batch_size):
        m = min(batch_size, start + n - b)
        out.append(to_uint8(forward_images(g, latents(seed, b, m, g.nz).to(device))))
    return np.concatenate(out) if out else np.zeros((0, 64, 64, 3), np.uint8)


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """Tile uint8 [n,H,W,3] images into one picture, `nrow` per row (default: near square)."""
    n, h, w, _ = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    return Image.fromarray(canvas)
