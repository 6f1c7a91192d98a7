"""Edge-popup: score-masked convolutions over frozen random weights, and the pruning modes.

Every conv weight has a score s ~ U(-0.1, 0.1), every bias one ~ U(-1, 1) as the released code
draws them (`bias_range`; this project's short-budget presets use 0.1). The forward pass keeps the weights
whose |s| ranks in the top fraction k (k = fraction KEPT, as in the paper) and the gradient
reaches s straight through the selection and then through |.|, as the released code does.
Modes: local (top-k per layer), global (top-k over all layers: weights and biases ranked apart,
as released, or jointly), gradual (local, k shrinking from 1 to k on a cubic schedule), random
(a fixed random mask at k, never trained).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.init import uniform

PRUNING = ("local", "global", "gradual", "random")
SCORE_RANGE = 0.1  # weight scores U(-0.1, 0.1)
BIAS_SCORE_RANGE = 1.0  # bias scores U(-1, 1), as the released code draws them
GLOBAL_THRESHOLDS = ("separate", "joint")


def n_keep(n: int, k: float) -> int:
    """Weights kept of n at fraction k: n - floor((1-k) n), as the released code counts."""
    return n - int(math.floor((1.0 - k) * n + 1e-9))


def n_keep_global(n: int, k: float) -> int:
    """Kept of n by the released global pruning, which prunes ceil((1-k) n) (local: floor)."""
    return n - int(math.ceil((1.0 - k) * n - 1e-9))


class Hint:
    """Where a threshold was last found, and how wide a band around it bracketed it, so the
    next step's selection looks there first (scores move little between steps)."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.width = 0.0


def kth_smallest(parts: list[torch.Tensor], j: int, hint: Hint | None = None) -> torch.Tensor:
    """The j-th smallest value (1-based) over the flattened `parts`: exactly
    `torch.cat(parts).kthvalue(j).values`. On a CPU with a hint, without a full selection: count
    the values at or below the two ends of a band around the last threshold (widened until
    it brackets rank j) and select within the band only."""
    flats = [p.flatten() for p in parts]
    if hint is not None and hint.value is not None and not flats[0].is_cuda:
        width = hint.width or max(abs(hint.value) * 1e-3, 1e-12)
        for _ in range(8):
            lo, hi = hint.value - width, hint.value + width
            below = sum(int(torch.count_nonzero(f <= lo)) for f in flats)
            upto = sum(int(torch.count_nonzero(f <= hi)) for f in flats)
            if below < j <= upto:
                band = torch.cat([f[(f > lo) & (f <= hi)] for f in flats])
                thr = band.kthvalue(j - below).values
                hint.value, hint.width = float(thr), width
                return thr
            width *= 4
    flat = flats[0] if len(flats) == 1 else torch.cat(flats)
    thr = flat.kthvalue(j).values
    if hint is not None and not flat.is_cuda:
        hint.value, hint.width = float(thr), 0.0
    return thr


def keep_mask(abs_scores: torch.Tensor, kept: int, hint: Hint | None = None) -> torch.Tensor:
    """Boolean mask of exactly `kept` largest entries, by selection (no full sort). Ties at the
    threshold go to the highest flat index, the order of a stable ascending argsort."""
    flat = abs_scores.flatten()
    n = flat.numel()
    if kept >= n:
        return torch.ones_like(abs_scores, dtype=torch.bool)
    if kept <= 0:
        return torch.zeros_like(abs_scores, dtype=torch.bool)
    thr = kth_smallest([flat], n - kept, hint)
    m = flat > thr
    return _add_ties(m, flat, thr, kept - m.sum()).view_as(abs_scores)


def _add_ties(m: torch.Tensor, flat: torch.Tensor, thr: torch.Tensor, short: torch.Tensor) -> torch.Tensor:
    """m plus the `short` last entries of `flat` equal to thr. float32 scores tie often enough
    at millions of weights that `> thr` alone keeps a few too few."""
    if not flat.is_cuda and int(short) <= 0:  # the common case; on CUDA avoid the host sync
        return m
    eq = flat == thr
    from_end = eq.flip(0).cumsum(0).flip(0)  # ties at or after each position
    return m | (eq & (from_end <= short))


class StraightThrough(torch.autograd.Function):
    """Forward: the given 0/1 mask. Backward: the gradient passes to |s| unchanged."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(abs_scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class MaskedLayer:
    """Mixin for a conv whose weight and bias are multiplied by edge-popup masks."""

    weight_scores: nn.Parameter
    bias_scores: nn.Parameter | None
    dense: bool = False  # layer-freeze: kept whole, scores not trained
    keep: float = 1.0  # local fraction, set by Pruner
    threshold: dict[str, torch.Tensor] | None = None  # global |s| threshold per score tensor, by Pruner
    tie_quota: dict[str, torch.Tensor] | None = None  # global: ties kept per score tensor

    def _setup_scores(self) -> None:
        self.weight_scores = nn.Parameter(torch.zeros_like(self.weight))
        self.bias_scores = None if self.bias is None else nn.Parameter(torch.zeros_like(self.bias))
        self._hints: dict[str, Hint] = {}  # where each score tensor's threshold was last step

    def masks(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Current (weight, bias) masks as 0/1 floats carrying straight-through gradients."""
        if self.dense:
            return None, None
        return self._mask(self.weight_scores, "weight"), (
            None if self.bias_scores is None else self._mask(self.bias_scores, "bias"))

    def _mask(self, s: torch.Tensor, which: str) -> torch.Tensor:
        a = s.abs()  # select on |s|; the straight-through step spans the selection only
        with torch.no_grad():
            if self.threshold is None:
                m = keep_mask(a, n_keep(a.numel(), self.keep), self._hints.setdefault(which, Hint()))
            else:
                flat = a.flatten()
                thr = self.threshold[which]
                m = _add_ties(flat > thr, flat, thr, self.tie_quota[which]).view_as(a)
        return StraightThrough.apply(a, m)

    def masked_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        wm, bm = self.masks()
        w = self.weight if wm is None else self.weight * wm
        b = self.bias if (bm is None or self.bias is None) else self.bias * bm
        return w, b


class MaskedConv2d(MaskedLayer, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_scores()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.masked_params()
        return self._conv_forward(x, w, b)


class MaskedConvTranspose2d(MaskedLayer, nn.ConvTranspose2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_scores()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.masked_params()
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


MASKED_LAYERS = {"conv": MaskedConv2d, "convT": MaskedConvTranspose2d}


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedLayer)]


def gradual_keep(step: int, k: float, steps: int) -> float:
    """Cubic schedule (Zhu & Gupta 2017): 1 at step 0, exactly k from `steps` on."""
    if steps <= 0 or step >= steps:
        return k
    return k + (1.0 - k) * (1.0 - step / steps) ** 3


class Pruner:
    """Sets every masked layer's selection for the current step, by pruning mode.

    With layer-freeze (`dense_layers`) the frozen layers keep every weight and the other layers
    are pruned harder, so the whole network still keeps the fraction k (the paper, Table 4)."""

    def __init__(self, model: nn.Module, k: float, mode: str = "local",
                 gradual_steps: int = 0, dense_layers: Iterable[str] = (),
                 global_threshold: str = "separate"):
        if mode not in PRUNING:
            raise ValueError(f"unknown pruning {mode!r}; choose from {PRUNING}")
        if global_threshold not in GLOBAL_THRESHOLDS:
            raise ValueError(f"global_threshold must be one of {GLOBAL_THRESHOLDS}, got {global_threshold!r}")
        self.global_threshold = global_threshold
        self._hints: dict[tuple[str, ...], Hint] = {}  # global thresholds of the last step
        if not 0.0 < k <= 1.0:
            raise ValueError(f"k is the fraction of weights KEPT and must be in (0, 1], got {k}")
        self.model, self.k, self.mode, self.gradual_steps = model, k, mode, gradual_steps
        self.layers = masked_layers(model)
        dense = set(dense_layers)
        unknown = dense - {n for n, _ in self.layers}
        if unknown:
            raise ValueError(f"--dense-layers names no masked layer: {sorted(unknown)}")
        for name, layer in self.layers:
            layer.dense = name in dense
            for s in (layer.weight_scores, layer.bias_scores):
                if s is not None:
                    s.requires_grad_(mode != "random" and not layer.dense)
        self.kept_total, self.k_pruned = self._budget()
        self.set_step(0)

    def _groups(self) -> list[tuple[str, ...]]:
        """Score kinds ranked together by global pruning: weights and biases apart, or together."""
        return [("weight",), ("bias",)] if self.global_threshold == "separate" else [("weight", "bias")]

    def _scores_of(self, which: tuple[str, ...], dense: bool | None = None):
        return [(l, w, s) for _, l in self.layers if dense is None or l.dense == dense
                for w, s in (("weight", l.weight_scores), ("bias", l.bias_scores))
                if s is not None and w in which]

    def _budget(self) -> tuple[int, float]:
        """Weights kept over the whole network, and the fraction the non-dense layers keep."""
        sizes = [(l.dense, s.numel()) for _, l in self.layers
                 for s in (l.weight_scores, l.bias_scores) if s is not None]
        total = sum(n for _, n in sizes)
        frozen = sum(n for d, n in sizes if d)
        kept = n_keep(total, self.k)
        if frozen == 0:
            return kept, self.k
        if frozen >= kept:
            raise ValueError(f"the dense layers alone hold {frozen} of {total} weights, more than "
                             f"k={self.k} keeps ({kept}); raise k or freeze fewer layers")
        if frozen == total:
            return kept, 1.0
        return kept, (kept - frozen) / (total - frozen)

    def scores(self) -> list[nn.Parameter]:
        """The trainable scores (empty for random pruning)."""
        return [s for _, l in self.layers for s in (l.weight_scores, l.bias_scores)
                if s is not None and s.requires_grad]

    def set_step(self, step: int) -> None:
        k = self.k_pruned
        keep = gradual_keep(step, k, self.gradual_steps) if self.mode == "gradual" else k
        for _, layer in self.layers:
            layer.keep, layer.threshold, layer.tie_quota = keep, None, None
        if self.mode == "global":
            self.update_global_threshold()

    @torch.no_grad()
    def update_global_threshold(self) -> None:
        """One |s| threshold per group (weights, biases: `_groups`) over all non-dense layers,
        keeping k of the group; ties at it go to the last entries of the concatenation, as a
        stable argsort orders them."""
        for l, _, _ in self._scores_of(("weight", "bias")):
            l.threshold, l.tie_quota = {}, {}
        for which in self._groups():
            self._group_threshold(which)

    def _group_threshold(self, which: tuple[str, ...]) -> None:
        pruned = self._scores_of(which, dense=False)
        if not pruned:
            return
        parts = [s.detach().abs().flatten() for _, _, s in pruned]
        n = sum(p.numel() for p in parts)
        total = sum(s.numel() for _, _, s in self._scores_of(which))
        frozen = total - n
        # with layer-freeze the non-dense part keeps what makes the whole group keep k
        kept = n_keep_global(total, self.k) - frozen if len(which) == 1 else self.kept_total - frozen
        if kept < 0:
            raise ValueError(f"the dense layers alone hold {frozen} of {total} {which[0]} scores, more "
                             f"than k={self.k} keeps; raise k or freeze fewer layers")
        if kept >= n:
            thr = torch.stack([p.min() for p in parts]).min() - 1
        else:
            thr = kth_smallest(parts, n - kept, self._hints.setdefault(which, Hint()))
        short = kept - sum((p > thr).sum() for p in parts)
        ties = torch.stack([(s.detach().abs() == thr).sum() for _, _, s in pruned])
        after = ties.flip(0).cumsum(0).flip(0) - ties  # ties in later tensors
        quota = (short - after).clamp(min=0).minimum(ties)
        for (l, w, _), q in zip(pruned, quota):
            l.threshold[w], l.tie_quota[w] = thr, q

    @torch.no_grad()
    def binary_masks(self) -> dict[str, torch.Tensor]:
        """Current masks as bool tensors named like the parameters ('blocks.0.conv1.weight')."""
        out = {}
        for name, layer in self.layers:
            wm, bm = layer.masks()
            out[f"{name}.weight"] = (torch.ones_like(layer.weight, dtype=torch.bool) if wm is None
                                     else wm.bool())
            if layer.bias is not None:
                out[f"{name}.bias"] = (torch.ones_like(layer.bias, dtype=torch.bool) if bm is None
                                       else bm.bool())
        return out


@torch.no_grad()
def init_scores(model: nn.Module, seed: int, bias_range: float = BIAS_SCORE_RANGE) -> None:
    """Weight scores U(-0.1, 0.1), bias scores U(-bias_range, bias_range), from the search seed
    (never the base seed), one stream per tensor."""
    i = 0
    for _, layer in masked_layers(model):
        for s, r in ((layer.weight_scores, SCORE_RANGE), (layer.bias_scores, bias_range)):
            if s is None:
                continue
            u = uniform(np.random.SeedSequence([seed, i, 7]), s.numel())
            s.copy_(torch.from_numpy(((u * 2.0 - 1.0) * r).astype(np.float32)).view_as(s))
            i += 1
