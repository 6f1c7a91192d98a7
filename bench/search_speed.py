"""Search iteration time: this project's search loop vs a plain port of the released loop, the
share of an iteration spent at convolution speed (`conv_share`), and the iteration's achieved
GFLOP/s as a share of a measured peak of this machine (`peak_share`).

"Ours" is `trainer.search.search` itself (kthvalue selection; on CUDA bf16 autocast and
channels_last), timed per iteration through its progress callback. The plain port does what the
released code does each step: a full sort of every layer's |scores| to build the mask, fp32,
the same cached real statistics, generator, extractor and batch. Prints JSON; run as
`python bench/search_speed.py --dataset var/datasets/emoji-google --width 1 --device cuda`.

Trials are interleaved (plain, ours, plain, ours, ...), each its own median of steps after
warm-up, so load that drifts over the run hits both loops alike; the speed-up is the median of
the trials' ratios, reported with their min and max.

conv_share: the FLOPs of an iteration's convolutions, counted from their shapes (forward;
backward to the input everywhere and to the weights in the generator, whose masked weights
get a gradient), at the time one iteration of the real loop takes, over the same FLOPs at the
time those convolutions take alone (random tensors of the same shapes, forward and backward):
the share of an iteration the device spends at the speed it reaches on its convolutions. It is
not a hardware roofline: the convolutions alone may run far below the machine's peak.

peak_share: the iteration's achieved GFLOP/s (its convolution FLOPs over its time) over a
measured peak: the best of torch.mm at large square shapes and of the iteration's own
convolutions each at its shape, at the precision "ours" runs at (fp32 on a CPU, bf16 on CUDA).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import time

import torch

from trainer.data import open_dataset
from trainer.features import load_extractor
from trainer.generator import BaseSpec, build_base
from trainer.objective import MomentMatching
from trainer.search import config_from, search
from trainer.stats import real_moments
from trainer.subnet import MASKED_LAYERS, MaskedLayer, Pruner, StraightThrough, init_scores

log = logging.getLogger("bench.search")


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


class ReleasedMoments(MomentMatching):
    """The moment-matching loss as the released code computes it (torch's mean and var over
    the batch), so the plain port does not get this project's faster variance."""

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        surrogate, plain = 0.0, 0.0
        for i, f in enumerate(feats):
            f = f.float().flatten(1)
            mu_f, var_f = f.mean(0), f.var(0, unbiased=self.unbiased)
            mu_r, var_r = getattr(self, f"mu_r{i}"), getattr(self, f"var_r{i}")
            w_mu, w_var = getattr(self, f"w_mu{i}"), getattr(self, f"w_var{i}")
            d_mu, d_var = mu_r - mu_f, var_r - var_f
            plain = plain + (w_mu * self._reduce(d_mu ** 2) + w_var * self._reduce(d_var ** 2)).detach()
            v_mu = self.ama[2 * i].update(d_mu.detach())
            v_var = self.ama[2 * i + 1].update(d_var.detach())
            surrogate = surrogate - (w_mu * self._reduce(2 * v_mu * mu_f)
                                     + w_var * self._reduce(2 * v_var * var_f))
        return surrogate, float(plain)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_plain(width: float, batch: int, device: str, steps: int, features: str, dataset,
               warmup: int = 2) -> float:
    g = build_base(BaseSpec(width=width), device, **MASKED_LAYERS)
    init_scores(g, 0)
    pruner = Pruner(g, 0.1, "local")
    for _, layer in pruner.layers:
        layer._mask = sorted_mask.__get__(layer)
    extractor = load_extractor(features, device)
    obj = ReleasedMoments(real_moments(dataset, extractor, device=device), ama=True).to(device)
    opt = torch.optim.Adam(pruner.scores(), lr=5e-5, betas=(0.5, 0.999))
    times = []
    for i in range(steps + warmup):
        sync(device)
        t = time.perf_counter()
        x = g(torch.randn(batch, 100, device=device))
        loss, _ = obj(extractor(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return median(times)


def time_ours(width: float, batch: int, device: str, steps: int, features: str, dataset,
              warmup: int = 2, amp: bool | None = None) -> float:
    """Per-iteration time of the real search loop (the progress callback runs after each step;
    the first step has no stamp before it, so it is always among the warm-up). `amp`: bf16
    autocast on CUDA (None: the loop's own default; False: fp32, the plain port's precision)."""
    stamps: list[float] = []
    cfg = config_from("paper", iterations=steps + warmup, batch_size=batch, features=features,
                      preview_every=0, bn_batches=1, amp=amp)
    search(BaseSpec(width=width), cfg, dataset, device=device,
           progress=lambda p: (sync(device), stamps.append(time.perf_counter())))
    return median([b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])])


def _conv_flops(kind: str, x: tuple, w: tuple, y: tuple, groups: int) -> float:
    """Multiply-adds x 2 of one forward convolution: per output (conv) or input (transposed)
    element, a dot product over (C/groups) x kh x kw."""
    if kind == "conv":
        return 2.0 * math.prod(y) * (w[1] * w[2] * w[3])
    return 2.0 * math.prod(x) * (w[1] * w[2] * w[3])  # convT weight [Cin, Cout/groups, kh, kw]


def capture_convs(width: float, batch: int, device: str, features: str) -> list[dict]:
    """Every convolution of one search step (generator and extractor) with its shapes."""
    g = build_base(BaseSpec(width=width), device, **MASKED_LAYERS)
    init_scores(g, 0)
    Pruner(g, 0.1, "local")
    extractor = load_extractor(features, device)
    seen: list[dict] = []

    def hook(part: str):
        def f(m, inp, out):
            kind = "convT" if isinstance(m, torch.nn.ConvTranspose2d) else "conv"
            seen.append({"part": part, "kind": kind, "x": tuple(inp[0].shape), "w": tuple(m.weight.shape),
                         "y": tuple(out.shape), "stride": m.stride, "padding": m.padding,
                         "output_padding": getattr(m, "output_padding", (0, 0)), "groups": m.groups,
                         "dilation": m.dilation, "bias": m.bias is not None})
        return f

    hooks = [m.register_forward_hook(hook(part)) for part, model in (("generator", g), ("extractor", extractor))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    with torch.no_grad():
        extractor(g(torch.randn(batch, 100, device=device)))
    for h in hooks:
        h.remove()
    return seen


def _conv_step(c: dict, x: torch.Tensor, w: torch.Tensor) -> None:
    import torch.nn.functional as F

    if c["kind"] == "conv":
        y = F.conv2d(x, w, None, c["stride"], c["padding"], c["dilation"], c["groups"])
    else:
        y = F.conv_transpose2d(x, w, None, c["stride"], c["padding"], c["output_padding"],
                               c["groups"], c["dilation"])
    y.backward(torch.ones_like(y))


def time_convs_alone(convs: list[dict], device: str, steps: int) -> tuple[float, float, float]:
    """(FLOPs of one iteration's convolutions, their median time alone, forward + backward,
    the best GFLOP/s one of them reaches at its own shape)."""
    flops, per_conv = 0.0, []
    for c in convs:
        f = _conv_flops(c["kind"], c["x"], c["w"], c["y"], c["groups"])
        f *= 3 if c["part"] == "generator" else 2  # + grad input (+ grad weight)
        flops += f
        per_conv.append(f)
    tensors = []
    for c in convs:
        x = torch.randn(c["x"], device=device, requires_grad=True)
        w = torch.randn(c["w"], device=device, requires_grad=c["part"] == "generator")
        tensors.append((c, x, w))
    times, best = [], [float("inf")] * len(convs)
    for i in range(steps + 1):
        sync(device)
        t = time.perf_counter()
        for j, (c, x, w) in enumerate(tensors):
            t_j = time.perf_counter()
            _conv_step(c, x, w)
            sync(device)  # per conv, for its own speed (a CPU runs them in order anyway)
            if i:
                best[j] = min(best[j], time.perf_counter() - t_j)
        if i:
            times.append(time.perf_counter() - t)
    best_gflops = max((f / t / 1e9 for f, t in zip(per_conv, best) if f > 1e8), default=0.0)
    return flops, median(times), best_gflops


def gemm_peak(device: str, dtype: torch.dtype = torch.float32,
              sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 3) -> dict:
    """The best GFLOP/s of torch.mm at square shapes (2 n^3 FLOPs each), best of `repeats`;
    a size is skipped once one product takes over 2 s (a slow device needs no larger one)."""
    out: dict = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up: allocation, kernel choice
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - t)
        out[str(n)] = round(2 * n ** 3 / best / 1e9, 2)
        if best > 2.0:
            break
    return {"gemm_gflops_by_size": out, "gemm_gflops": max(out.values())}


def run(settings: list[tuple[float, int]], device: str = "cpu", steps: int = 3,
        features: str = "vgg16-keras", dataset=None, trials: int = 3, warmup: int = 2) -> dict:
    """The search table over (width, batch) settings: `trials` interleaved trials of the plain
    port and ours (each a median of `steps` after `warmup`), the speed-up's median and spread,
    conv_share and peak_share; the measured peak; the speed-ups at width 1, batch 16 and 64."""
    ds = dataset if dataset is not None else open_dataset(
        os.path.join(os.environ.get("SLT_HOME", "var"), "datasets", "emoji-google"))
    gpu = device.startswith("cuda")
    peak = gemm_peak(device, torch.bfloat16 if gpu else torch.float32)
    rows = []
    for width, batch in settings:
        plain_t, ours_t, ours_fp32_t = [], [], []
        for _ in range(trials):  # interleaved: plain, ours, plain, ours, ...
            plain_t.append(time_plain(width, batch, device, steps, features, ds, warmup))
            ours_t.append(time_ours(width, batch, device, steps, features, ds, warmup))
            if gpu:  # the same loop at the plain port's precision, for an equal-precision ratio
                ours_fp32_t.append(time_ours(width, batch, device, steps, features, ds, warmup, amp=False))
        flops, alone, best_conv = time_convs_alone(capture_convs(width, batch, device, features), device, steps)
        base = ours_fp32_t or ours_t  # the speed-up is taken at equal precision
        ratios = sorted(p / o for p, o in zip(plain_t, base))
        ours = statistics.median(ours_t)
        row = {"width": width, "batch": batch, "trials": trials, "steps": steps,
               "plain_port_s": round(statistics.median(plain_t), 4), "ours_s": round(ours, 4),
               "plain_port_trials_s": [round(x, 4) for x in plain_t],
               "ours_trials_s": [round(x, 4) for x in ours_t],
               "speedup": round(statistics.median(ratios), 3),
               "speedup_min": round(ratios[0], 3), "speedup_max": round(ratios[-1], 3),
               "conv_gflop": round(flops / 1e9, 2), "convs_alone_s": round(alone, 4),
               "achieved_gflops": round(flops / ours / 1e9, 2),
               "convs_alone_gflops": round(flops / alone / 1e9, 2),
               "best_conv_gflops": round(best_conv, 2),
               "conv_share": round(alone / ours, 3),
               "ours_options": "bf16+channels_last" if gpu else "fp32"}
        if gpu:
            row["ours_fp32_s"] = round(statistics.median(ours_fp32_t), 4)
            row["speedup_bf16"] = round(statistics.median(plain_t) / ours, 3)
        rows.append(row)
        log.info("search width %g batch %d: speed-up %.3f (%.3f..%.3f), conv_share %.3f",
                 width, batch, row["speedup"], row["speedup_min"], row["speedup_max"], row["conv_share"])
    # the peak: the best of the GEMM and of any of the iteration's convolutions at its shape
    # (measured at fp32 on a CPU; a CUDA conv here runs fp32 too, so the GEMM's bf16 wins there)
    peak["best_conv_gflops"] = max((r["best_conv_gflops"] for r in rows), default=0.0)
    peak["peak_gflops"] = max(peak["gemm_gflops"], peak["best_conv_gflops"])
    peak["dtype"] = "bf16" if gpu else "fp32"
    for r in rows:
        r["peak_share"] = round(r["achieved_gflops"] / peak["peak_gflops"], 3)
    ref = next((r for r in rows if r["width"] == 1.0 and r["batch"] == 16), rows[0])
    return {"search_speedup_vs_reference": ref["speedup"],
            "conv_share": min(r["conv_share"] for r in rows), "peak": peak, "search_table": rows,
            "search_features": features, "search_steps": steps, "search_trials": trials}


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
