"""Search iteration time: this project's search loop vs a plain port of the released loop.

"Ours" is `trainer.search.search` itself (kthvalue selection; on CUDA bf16 autocast and
channels_last), timed per iteration through its progress callback. The plain port does what the
released code does each step: a full sort of every layer's |scores| to build the mask, fp32,
the same cached real statistics, generator, extractor and batch. Prints JSON; run as
`python bench/search_speed.py --dataset var/datasets/emoji-google --width 1 --device cuda`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from trainer.data import open_dataset
from trainer.features import load_extractor
from trainer.generator import BaseSpec, build_base
from trainer.objective import MomentMatching
from trainer.search import config_from, search
from trainer.stats import real_moments
from trainer.subnet import MASKED_LAYERS, MaskedLayer, Pruner, StraightThrough, init_scores


def sorted_mask(self: MaskedLayer, s: torch.Tensor, which: str) -> torch.Tensor:
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


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_plain(width: float, batch: int, device: str, steps: int, features: str, dataset) -> float:
    g = build_base(BaseSpec(width=width), device, **MASKED_LAYERS)
    init_scores(g, 0)
    pruner = Pruner(g, 0.1, "local")
    for _, layer in pruner.layers:
        layer._mask = sorted_mask.__get__(layer)
    extractor = load_extractor(features, device)
    obj = MomentMatching(real_moments(dataset, extractor, device=device), ama=True).to(device)
    opt = torch.optim.Adam(pruner.scores(), lr=5e-5, betas=(0.5, 0.999))
    times = []
    for i in range(steps + 2):
        sync(device)
        t = time.perf_counter()
        x = g(torch.randn(batch, 100, device=device))
        loss, _ = obj(extractor(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return median(times)


def time_ours(width: float, batch: int, device: str, steps: int, features: str, dataset) -> float:
    """Per-iteration time of the real search loop (the progress callback runs after each step)."""
    stamps: list[float] = []
    cfg = config_from("paper", iterations=steps + 2, batch_size=batch, features=features,
                      preview_every=0, bn_batches=1)
    search(BaseSpec(width=width), cfg, dataset, device=device,
           progress=lambda p: (sync(device), stamps.append(time.perf_counter())))
    return median([b - a for a, b in zip(stamps[1:], stamps[2:])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default=os.path.join(os.environ.get("SLT_HOME", "var"), "datasets", "emoji-google"))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, nargs="+", default=[16, 64])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--features", default="vgg16-keras")
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    dev_name = torch.cuda.get_device_name() if gpu else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    ds = open_dataset(a.dataset)
    rows = []
    for b in a.batch_size:
        plain = time_plain(a.width, b, a.device, a.steps, a.features, ds)
        ours = time_ours(a.width, b, a.device, a.steps, a.features, ds)
        rows.append({"batch": b, "plain_port_s": round(plain, 4), "ours_s": round(ours, 4),
                     "speedup": round(plain / ours, 3), "ours_options": "bf16+channels_last" if gpu else "fp32"})
    print(json.dumps({"device": dev_name, "width": a.width, "features": a.features, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
