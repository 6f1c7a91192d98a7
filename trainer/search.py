"""The mask search (edge-popup on a frozen random base with moment matching) and the paper's
baselines that share its loop: random pruning, dense training, pruning trained weights,
fine-tuning a found ticket. Long runs report progress, honour cancel, checkpoint and resume.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from trainer.atomic_write import write_atomic
from trainer.digest import sha256_bytes
from trainer.generator import BaseSpec, Generator, base_sha256, build_base, latents
from trainer.masks import MaskFile, encode_mask
from trainer.objective import REDUCTIONS, MomentMatching, objective_record
from trainer.subnet import MASKED_LAYERS, Pruner, init_scores, masked_layers
from trainer.ticket import build_ticket, grid, recalibrate_bn, to_uint8

log = logging.getLogger(__name__)
WEIGHTS_FORMAT = "slt-weights/1"


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; the defaults are the paper's recipe (Adam 5e-5, batch 64, 2M steps)."""

    k: float = 0.1  # fraction of weights KEPT (the paper's k)
    iterations: int = 2_000_000
    batch_size: int = 64
    pruning: str = "local"  # local | global | gradual | random
    lr: float = 5e-5
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0  # seeds scores and latents, never the base
    features: str = "vgg19"
    schedule: str = "cosine"  # cosine annealing over the whole run, or constant
    warmup: int = 0  # linear warm-up iterations
    ama: bool = True
    ama_lr: float = 1e-5
    reduction: str = "sum"  # Eq. 3 sums over every feature of every layer; "layer-mean" is ours
    layer_norm: bool = False  # weight each feature layer by 1 / its real mean square (ours)
    var_weight: float = 1.0  # weight of the variance terms against the mean terms (paper: 1)
    unbiased_var: bool = True  # unbiased variances on both sides, as the released code computes
    bias_score_range: float = 1.0  # bias scores U(-r, r): 1 in the released code (weights: 0.1)
    global_threshold: str = "separate"  # global pruning: weights and biases ranked apart (released)
    gradual_steps: int = 0  # gradual pruning reaches k here (0: half the run)
    dense_layers: tuple[str, ...] = ()  # layer-freeze: these layers stay dense
    bn_batches: int = 50  # batches for the final BatchNorm statistics
    amp: bool | None = None  # bf16 autocast and channels_last; None: on for CUDA, off on CPU
    preview_every: int = 100
    checkpoint_every_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 < self.k <= 1.0:
            raise ValueError(f"k is the fraction of weights KEPT, in (0, 1]; got {self.k}")
        if self.var_weight < 0 or self.ama_lr <= 0:
            raise ValueError("var_weight must be >= 0 and ama_lr > 0")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.global_threshold not in ("separate", "joint"):
            raise ValueError(f"global_threshold must be separate or joint, got {self.global_threshold!r}")
        if not self.bias_score_range > 0:
            raise ValueError("bias_score_range must be > 0")
        if self.iterations < 0 or self.batch_size < 2:
            raise ValueError("iterations must be >= 0 and batch_size >= 2 (variances need two)")


# This project's own objective and selection details for short budgets, not the paper's: a
# per-layer mean over features, each layer in units of its real scale, population variances,
# bias scores in the weights' range and one global threshold over weights and biases together.
PROJECT_OBJECTIVE = dict(reduction="layer-mean", layer_norm=True, unbiased_var=False,
                         bias_score_range=0.1, global_threshold="joint")

PRESETS: dict[str, dict] = {
    # exactly as published (Eq. 3 summed, AMA, VGG19, Adam 5e-5 cosine, batch 64, 2M iterations)
    # and as released where the paper is silent (unbiased variances, bias scores U(-1, 1),
    # separate weight and bias thresholds); VGG19 weights are required, never substituted
    "paper": {},
    # the demo's measured recipe at a GPU's budget (docs/TIME_TO_QUALITY.md; no GPU measured it
    # yet). Batch 32: batch 64 did worse per image and per iteration, so per second on any device
    "fast": dict(features="vgg16-keras", lr=1e-2, ama=False, iterations=20_000,
                 batch_size=32, warmup=100, pruning="global", **PROJECT_OBJECTIVE),
    # the best a 2-core CPU gives in about 10 minutes ON THE WIDTH-0.25 BASE (`make run`'s);
    # global pruning (the paper's Table 3 finds it better than per-layer) reached 19-20% of a
    # random mask's KID where local reached 26-29%. Width 1 costs about 2.6x per iteration.
    "demo": dict(features="vgg16-keras", lr=1e-2, ama=False, iterations=350,
                 batch_size=32, warmup=20, bn_batches=20, preview_every=25, pruning="global",
                 **PROJECT_OBJECTIVE),
}


# What a stored config without the session-5 fields meant: every preset then took a per-layer
# mean with population variances, bias scores U(-0.1, 0.1) and one joint global threshold.
LEGACY_OBJECTIVE = dict(reduction="layer-mean", unbiased_var=False, bias_score_range=0.1,
                        global_threshold="joint")


def config_from_record(stored: dict) -> SearchConfig:
    """The SearchConfig of a stored `asdict(config)` (a job record, a checkpoint), read as it
    meant when it was written, so an older job resumes the search it started."""
    if "reduction" not in stored:
        stored = {**LEGACY_OBJECTIVE, **stored}
    return config_from(None, **stored)


def config_from(preset: str | None = None, **overrides) -> SearchConfig:
    """A preset's settings with explicit overrides (None values ignored)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    # no preset is the paper's: its VGG19 features are never swapped for another extractor
    base = {**PRESETS.get(preset or "paper", {}), **{k: v for k, v in overrides.items() if v is not None}}
    if "dense_layers" in base:
        base["dense_layers"] = tuple(base["dense_layers"])
    if "betas" in base:
        base["betas"] = tuple(base["betas"])
    return SearchConfig(**base)


@dataclass
class Progress:
    iteration: int
    iterations: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float
    keep: float
    preview_png: bytes | None = None
    snapshot: Callable[[], nn.Module] | None = None  # the current ticket, BN recalibrated, eval mode
    drift: Callable[[], float] | None = None  # fraction of mask entries flipped since iteration 0


class SearchCancelled(Exception):
    """Raised when the cancel check says stop; nothing is written."""


@dataclass
class SearchResult:
    data: bytes  # the mask (or weights) file
    final_loss: float
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def mask_id(self) -> str:

        return sha256_bytes(self.data)


def learning_rate(cfg: SearchConfig, t: int) -> float:
    """Linear warm-up, then cosine annealing to 0 over the whole run (or constant)."""
    if cfg.warmup and t < cfg.warmup:
        return cfg.lr * (t + 1) / cfg.warmup
    if cfg.schedule == "constant" or cfg.iterations <= cfg.warmup:
        return cfg.lr
    p = (t - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * p))


def _png(images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    grid(images).save(buf, format="PNG")
    return buf.getvalue()


def _save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _loop(model: nn.Module, params: list[torch.Tensor], cfg: SearchConfig, objective: MomentMatching,
          extractor: nn.Module, device: str, after_step: Callable[[int], None],
          progress: Callable[[Progress], None] | None, cancel: Callable[[], bool] | None,
          checkpoint: Path | None, resume: bool, keep: Callable[[], float],
          snapshot: Callable[[], nn.Module] | None = None,
          drift: Callable[[], float] | None = None) -> list[tuple[int, float]]:
    """The shared optimisation loop; returns (iteration, loss) points."""
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)  # latents; CPU so the stream is device-free
    start, losses = 0, []
    state = load_checkpoint(checkpoint) if (checkpoint and resume) else None
    if state is not None:
        if state["config"] != json.dumps(asdict(cfg), sort_keys=True):
            raise ValueError(f"checkpoint {checkpoint} was made with other settings; remove it or match them")
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
        opt.load_state_dict(state["opt"])
        objective.load_state_dict(state["objective"], strict=False)
        gen.set_state(state["rng"])
        start, losses = int(state["iteration"]), [tuple(x) for x in state["losses"]]
        log.info("resumed from %s at iteration %d", checkpoint, start)
    after_step(start)
    preview_z = latents(cfg.seed + 1, 0, 16, model.nz).to(device)
    t0, last_ckpt, loss = time.monotonic(), time.monotonic(), float("nan")
    use_amp = fast_kernels(cfg, device)
    for t in range(start, cfg.iterations):
        if cancel is not None and cancel():
            raise SearchCancelled(f"cancelled at iteration {t}")
        lr = learning_rate(cfg, t)
        for g in opt.param_groups:
            g["lr"] = lr
        z = torch.randn(cfg.batch_size, model.nz, generator=gen).to(device)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            x = model(z)  # [B,3,64,64]
            feats = extractor(x)
        surrogate, loss = objective(feats)  # moments in fp32 whatever the autocast
        opt.zero_grad(set_to_none=True)
        surrogate.backward()
        opt.step()
        after_step(t + 1)
        losses.append((t + 1, loss))
        done = t + 1 - start
        elapsed = time.monotonic() - t0
        if progress is not None:
            preview = None
            if cfg.preview_every and ((t + 1) % cfg.preview_every == 0 or t + 1 == cfg.iterations):
                with torch.no_grad():
                    preview = _png(to_uint8(model(preview_z)))
            progress(Progress(t + 1, cfg.iterations, loss, lr, elapsed,
                              elapsed / done * (cfg.iterations - t - 1), keep(), preview, snapshot, drift))
        if checkpoint and (time.monotonic() - last_ckpt >= cfg.checkpoint_every_s or t + 1 == cfg.iterations):
            _save_checkpoint(checkpoint, {
                "iteration": t + 1, "params": [p.detach().cpu() for p in params],
                "opt": opt.state_dict(), "objective": {k: v for k, v in objective.state_dict().items()
                                                       if k.startswith("ama.")},
                "rng": gen.get_state(), "losses": losses, "config": json.dumps(asdict(cfg), sort_keys=True)})
            last_ckpt = time.monotonic()
    return losses


def fast_kernels(cfg: SearchConfig, device: str) -> bool:
    """bf16 autocast and channels_last: on CUDA unless `amp=False`; never on CPU (CPU bf16
    convolutions are not a speed-up to count on, and fp32 keeps CPU runs bit-reproducible)."""
    return str(device).startswith("cuda") and cfg.amp is not False


def _prepare(cfg: SearchConfig, dataset, device: str, cache_dir: Path | None):
    from trainer.features import load_extractor
    from trainer.stats import real_moments

    extractor = load_extractor(cfg.features, device)
    real = real_moments(dataset, extractor, batch_size=64, device=device, cache_dir=cache_dir)
    if fast_kernels(cfg, device):
        extractor = extractor.to(memory_format=torch.channels_last)
    objective = MomentMatching(real, ama=cfg.ama, ama_lr=cfg.ama_lr, layer_norm=cfg.layer_norm,
                               var_weight=cfg.var_weight, reduction=cfg.reduction,
                               unbiased=cfg.unbiased_var).to(device)
    return extractor, objective


def objective_of(cfg: SearchConfig) -> dict:
    """The objective a search with `cfg` optimises (name and reduction), as masks record it."""
    return objective_record(cfg.reduction, cfg.layer_norm, cfg.var_weight, cfg.unbiased_var,
                            cfg.ama, cfg.ama_lr)


def precision_of(cfg: SearchConfig, device: str) -> str:
    """The arithmetic of the search's forward passes, as masks record it."""
    return "bf16-autocast" if fast_kernels(cfg, device) else "fp32"


def _mask_meta(spec: BaseSpec, sha: str, cfg: SearchConfig, domain: str, dataset_sha: str,
               features: str, iterations: int, metrics: dict, device: str = "cpu") -> dict:
    trained = cfg.pruning != "random"  # a random mask optimised nothing
    return dict(base_arch=spec.arch_json(), base_seed=str(spec.seed), base_sha256=sha,
                init=spec.init, k=str(cfg.k), pruning=cfg.pruning, domain=domain,
                dataset_sha256=dataset_sha, features=features, iterations=str(iterations),
                metrics=json.dumps(metrics, sort_keys=True), dense_layers=json.dumps(list(cfg.dense_layers)),
                search=json.dumps(asdict(cfg), sort_keys=True),
                objective=json.dumps(objective_of(cfg) if trained else {"name": "none"}, sort_keys=True),
                search_precision=precision_of(cfg, device) if trained else "none")


def _finish_mask(g: Generator, pruner: Pruner, spec: BaseSpec, sha: str, cfg: SearchConfig,
                 domain: str, dataset_sha: str, features: str, iterations: int,
                 metrics: dict, device: str, extra: dict | None = None) -> bytes:
    """Final masks, BN statistics recomputed over many batches for the final mask, file bytes."""
    pruner.set_step(cfg.iterations)
    masks = pruner.binary_masks()
    bn = recalibrate_bn(g, spec.nz, batches=cfg.bn_batches, seed=cfg.seed + 2, device=device)
    return encode_mask(masks, bn, {**_mask_meta(spec, sha, cfg, domain, dataset_sha, features,
                                                iterations, metrics, device), **(extra or {})})


def random_mask(spec: BaseSpec, cfg: SearchConfig, dataset_sha: str, domain: str = "",
                device: str = "cpu") -> bytes:
    """The random-pruning baseline: a fixed random mask at k (scores drawn from `cfg.seed`)."""
    g = build_base(spec, device, **MASKED_LAYERS)
    sha = base_sha256(g)
    init_scores(g, cfg.seed, cfg.bias_score_range)
    if fast_kernels(cfg, device):
        g = g.to(memory_format=torch.channels_last)
    pruner = Pruner(g, cfg.k, "random", dense_layers=cfg.dense_layers)
    cfg = replace(cfg, pruning="random")
    return _finish_mask(g, pruner, spec, sha, cfg, domain, dataset_sha, "none", 0, {}, device)


def search(spec: BaseSpec, cfg: SearchConfig, dataset, domain: str = "", device: str = "cpu",
           progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None,
           checkpoint: Path | None = None, resume: bool = False, cache_dir: Path | None = None,
           from_weights: Path | None = None) -> SearchResult:
    """Edge-popup with moment matching; returns the mask file. `from_weights` prunes a trained
    dense model instead of the random base (the paper's prune-a-trained-model baseline)."""
    if cfg.pruning == "random":
        return SearchResult(random_mask(spec, cfg, dataset.dataset_sha256, domain, device), float("nan"), 0.0)
    t0 = time.monotonic()
    extractor, objective = _prepare(cfg, dataset, device, cache_dir)
    g = build_base(spec, device, **MASKED_LAYERS)
    if from_weights is not None:
        spec_w, state = read_weights(from_weights)
        g = Generator(spec_w.nz, spec_w.width, **MASKED_LAYERS)
        missing, unexpected = g.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("_scores") for k in missing):
            raise ValueError(f"{from_weights} does not fit the generator: missing "
                             f"{[k for k in missing if not k.endswith('_scores')]}, unexpected {unexpected}")
        for p in g.parameters():
            p.requires_grad_(False)
        g = g.to(device)
        spec = spec_w  # the mask's base is this weights file: `build_ticket(..., base=...)`
    sha = base_sha256(g)
    init_scores(g, cfg.seed, cfg.bias_score_range)
    if fast_kernels(cfg, device):
        g = g.to(memory_format=torch.channels_last)
    pruner = Pruner(g, cfg.k, cfg.pruning, gradual_steps=cfg.gradual_steps or cfg.iterations // 2,
                    dense_layers=cfg.dense_layers, global_threshold=cfg.global_threshold)
    # the mask the scores start from (before a checkpoint's scores are loaded): how far a search
    # has moved it is the question for optimisers that barely move scores (the paper's Adam 5e-5)
    pruner.set_step(0)
    start = pruner.binary_masks()
    total = sum(m.numel() for m in start.values())

    def drift() -> float:
        now = pruner.binary_masks()
        return sum(int((now[n] != m).sum()) for n, m in start.items()) / total

    losses = _loop(g, pruner.scores(), cfg, objective, extractor, device, pruner.set_step,
                   progress, cancel, checkpoint, resume, keep=lambda: masked_layers(g)[0][1].keep,
                   snapshot=lambda: snapshot_of(g, spec, cfg, device), drift=drift)
    final = losses[-1][1] if losses else float("nan")
    extra = {} if from_weights is None else {"base_source": "weights"}
    data = _finish_mask(g, pruner, spec, sha, cfg, domain, dataset.dataset_sha256,
                        extractor.name, cfg.iterations, {"final_loss": final}, device, extra)
    return SearchResult(data, final, time.monotonic() - t0, losses)


def snapshot_of(g: nn.Module, spec: BaseSpec, cfg: SearchConfig, device: str,
                keep_only: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model as it stands mid-run, ready to evaluate: a copy (the run goes on untouched)
    with `keep_only`'s pruned weights zeroed (fine-tuning: as the run's end does, should the
    optimiser have moved them) and BatchNorm statistics recalibrated, in eval mode. A ticket,
    a dense model or a fine-tuned ticket alike."""
    twin = copy.deepcopy(g)
    with torch.no_grad():
        if keep_only is not None:
            named = dict(twin.named_parameters())
            for n, m in keep_only.items():
                named[n].mul_(m.to(device))
        recalibrate_bn(twin, spec.nz, batches=max(2, cfg.bn_batches // 2), seed=cfg.seed + 2, device=device)
    return twin.eval()


# ---- dense weights files (dense-training and fine-tuning baselines) --------------------------

def encode_weights(g: Generator, spec: BaseSpec, meta: dict) -> bytes:
    state = {k: v.detach().cpu().float().contiguous() for k, v in g.state_dict().items()
             if not k.endswith("_scores") and v.is_floating_point()}
    m = {"format": WEIGHTS_FORMAT, "base_arch": spec.arch_json(), "init": spec.init,
         "base_seed": str(spec.seed), **{k: str(v) for k, v in meta.items()}}
    return save(state, metadata=m)


def read_weights(path: Path) -> tuple[BaseSpec, dict[str, torch.Tensor]]:
    """A dense weights file (safetensors, never pickle): its base spec and state dict."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a {WEIGHTS_FORMAT} file (format {meta.get('format')!r})")
    arch = json.loads(meta["base_arch"])
    spec = BaseSpec(nz=int(arch["nz"]), width=float(arch["width"]), init=meta["init"],
                    seed=int(meta["base_seed"]))
    return spec, load_file(str(path))


def weights_generator(path: Path, device: str = "cpu") -> Generator:
    spec, state = read_weights(path)
    g = Generator(spec.nz, spec.width)
    g.load_state_dict(state, strict=True)
    return g.eval().to(device)


def _train_weights(g: Generator, spec: BaseSpec, cfg: SearchConfig, dataset, kind: str, device: str,
                   grad_mask: dict[str, torch.Tensor] | None, progress, cancel, checkpoint, resume,
                   cache_dir, extra: dict) -> SearchResult:
    t0 = time.monotonic()
    extractor, objective = _prepare(cfg, dataset, device, cache_dir)
    # every parameter trains, BatchNorm affine included, as GFMN trains its generator
    params = [p for n, p in g.named_parameters() if not n.endswith("_scores")]
    for p in params:
        p.requires_grad_(True)
    if grad_mask is not None:  # fine-tuning trains only the weights the ticket kept
        named = dict(g.named_parameters())
        for n, m in grad_mask.items():
            named[n].register_hook(lambda grad, m=m.to(device): grad * m)
    losses = _loop(g, params, cfg, objective, extractor, device, lambda t: None, progress, cancel,
                   checkpoint, resume, keep=lambda: 1.0,
                   snapshot=lambda: snapshot_of(g, spec, cfg, device, grad_mask))
    for p in g.parameters():
        p.requires_grad_(False)
    if grad_mask is not None:  # Adam's momentum may move masked weights off zero; keep them pruned
        with torch.no_grad():
            named = dict(g.named_parameters())
            for n, m in grad_mask.items():
                named[n].mul_(m.to(device))
    recalibrate_bn(g, spec.nz, batches=cfg.bn_batches, seed=cfg.seed + 2, device=device)
    final = losses[-1][1] if losses else float("nan")
    data = encode_weights(g, spec, {"kind": kind, "features": extractor.name,
                                    "objective": json.dumps(objective_of(cfg), sort_keys=True),
                                    "search_precision": precision_of(cfg, device),
                                    "dataset_sha256": dataset.dataset_sha256,
                                    "iterations": cfg.iterations, "final_loss": final,
                                    "search": json.dumps(asdict(cfg), sort_keys=True), **extra})
    return SearchResult(data, final, time.monotonic() - t0, losses)


def train_dense(spec: BaseSpec, cfg: SearchConfig, dataset, device: str = "cpu", **kw) -> SearchResult:
    """Dense baseline: train every parameter of a Xavier-uniform generator (conv weights and
    biases, BatchNorm affine) with the same loss, as GFMN trains it."""
    spec = replace(spec, init="xavier_uniform")
    g = build_base(spec, device)
    return _train_weights(g, spec, cfg, dataset, "dense", device, None, extra={}, **_kw(kw))


def finetune(mask: MaskFile, cfg: SearchConfig, dataset, device: str = "cpu",
             base: Generator | None = None, **kw) -> SearchResult:
    """Fine-tune the kept weights (and BatchNorm affine, as the dense baseline trains it) of a
    found ticket with the same loss; pruned weights stay zero.
    `base`: the trained weights a `--from-weights` mask prunes."""
    from trainer.ticket import spec_of

    spec = spec_of(mask)
    g = build_ticket(mask, device, base=base)
    return _train_weights(g, spec, cfg, dataset, "finetuned", device, mask.masks(),
                          extra={"mask_id": mask.mask_id}, **_kw(kw))


def _kw(kw: dict) -> dict:
    return {k: kw.get(k) for k in ("progress", "cancel", "checkpoint", "cache_dir")} | {
        "resume": kw.get("resume", False)}

