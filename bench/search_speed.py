"""Search iteration time: this project's loop vs a plain port of the released loop.

The plain port does what the released code does each step: a full sort of every layer's
|scores| to build the mask, fp32 throughout, real statistics computed once and cached (both
sides use the same cached moments, generator, extractor and batch). Prints JSON; run as
`python bench/search_speed.py --width 1 --batch-size 64 --device cuda`.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from trainer.features import load_extractor
from trainer.generator import BaseSpec, build_base
from trainer.objective import MomentMatching
from trainer.stats import Moments
from trainer.subnet import MASKED_LAYERS, MaskedLayer, Pruner, StraightThrough, init_scores


def sorted_mask(self: MaskedLayer, s: torch.Tensor) -> torch.Tensor:
    """The released GetSubnet: sort all |scores|, zero the lowest (1-k) fraction."""
    a = s.abs()
    with torch.no_grad():
        out = torch.empty_like(a)
        _, idx = a.flatten().sort()
        j = int((1 - self.keep) * a.numel())
        flat = out.view(-1)
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
    return StraightThrough.apply(a, out.bool())


def fake_moments(extractor, device: str) -> Moments:
    with torch.no_grad():
        feats = extractor(torch.zeros(2, 3, 64, 64, device=device))
    return Moments([f[0].flatten().double().cpu() for f in feats],
                   [torch.ones(f[0].numel(), dtype=torch.float64) for f in feats], n=1)


def time_loop(width: float, batch: int, device: str, steps: int, plain: bool, amp: bool,
              channels_last: bool, features: str) -> float:
    g = build_base(BaseSpec(width=width), device, **MASKED_LAYERS)
    init_scores(g, 0)
    pruner = Pruner(g, 0.1, "local")
    if plain:
        for _, layer in pruner.layers:
            layer._mask = sorted_mask.__get__(layer)
    extractor = load_extractor(features, device)
    if channels_last:
        g = g.to(memory_format=torch.channels_last)
        extractor = extractor.to(memory_format=torch.channels_last)
    obj = MomentMatching(fake_moments(extractor, device), ama=True).to(device)
    opt = torch.optim.Adam(pruner.scores(), lr=5e-5, betas=(0.5, 0.999))
    times = []
    for i in range(steps + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        z = torch.randn(batch, 100, device=device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            x = g(z)
            feats = extractor(x)
        loss, _ = obj(feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, nargs="+", default=[16, 64])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--features", default="vgg16-keras")
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    dev_name = torch.cuda.get_device_name() if gpu else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    rows = []
    for b in a.batch_size:
        plain = time_loop(a.width, b, a.device, a.steps, True, False, False, a.features)
        ours = time_loop(a.width, b, a.device, a.steps, False, gpu, gpu, a.features)
        rows.append({"batch": b, "plain_port_s": round(plain, 4), "ours_s": round(ours, 4),
                     "speedup": round(plain / ours, 3), "ours_options": "bf16+channels_last" if gpu else "fp32"})
    print(json.dumps({"device": dev_name, "width": a.width, "features": a.features, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
