"""Time to quality: run one search configuration and record loss, KID and FID (standard
Inception) against iterations and wall-clock seconds, as JSON and PNG curves.

`python -m trainer curve --dataset D --out DIR --label NAME [search options]` writes
DIR/NAME.json, DIR/NAME.safetensors (final mask), DIR/NAME-grid.png, and redraws
DIR/curves.png from every JSON in DIR, so studies accumulate in one folder.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainer.evaluate import generated_images, real_features
from trainer.generator import BaseSpec
from trainer.metrics import compute_metrics, kid_subset_size
from trainer.metrics.embed import EvalEmbedder
from trainer.search import Progress, SearchConfig, random_mask, search

log = logging.getLogger(__name__)


def compare(fake: np.ndarray, real: np.ndarray, kid_subsets: int = 50) -> dict:
    """KID, FID and precision/recall/density/coverage of two feature sets [N,D]."""
    m = compute_metrics(fake, real, kid_subset_size=kid_subset_size(len(fake), len(real)), kid_subsets=kid_subsets)
    return {k: m[k] for k in ("kid", "kid_std", "fid", "precision", "recall", "density", "coverage")}


def score(g, embedder: EvalEmbedder, real: np.ndarray, n: int, seed: int, device: str,
          kid_subsets: int = 50) -> dict:
    """KID and FID of n images of g against the real features (KID is the small-n measure)."""
    return compare(embedder(generated_images(g, n, seed, device), batch_size=50), real, kid_subsets)


def run_curve(spec: BaseSpec, cfg: SearchConfig, dataset, out_dir: Path, label: str,
              embedder: EvalEmbedder, eval_every: int, eval_n: int = 256, device: str = "cpu",
              real_split: str = "all") -> dict:
    """One search with periodic evaluation; evaluation time is excluded from `seconds`."""
    from trainer.masks import decode_mask
    from trainer.ticket import build_ticket

    out_dir.mkdir(parents=True, exist_ok=True)
    real = real_features(dataset, real_split, 10_000, embedder)
    rand = decode_mask(random_mask(spec, cfg, dataset.dataset_sha256, device=device))
    baseline = score(build_ticket(rand, device), embedder, real, eval_n, 0, device)
    log.info("random mask at k=%s: KID %.4f FID %.1f", cfg.k, baseline["kid"], baseline["fid"])
    points, spent_eval, t0 = [], 0.0, time.monotonic()  # the clock covers the search only
    losses: list[tuple[int, float, float]] = []

    def on_progress(p: Progress) -> None:
        nonlocal spent_eval
        seconds = time.monotonic() - t0 - spent_eval
        losses.append((p.iteration, p.loss, seconds))
        if p.iteration % eval_every == 0 or p.iteration == p.iterations:
            te = time.monotonic()
            m = score(p.snapshot(), embedder, real, eval_n, 0, device)
            spent_eval += time.monotonic() - te
            points.append({"iteration": p.iteration, "seconds": round(seconds, 2), "loss": p.loss, **m})
            log.info("%s it %d (%.0f s): loss %.4g KID %.4f FID %.1f", label, p.iteration, seconds,
                     p.loss, m["kid"], m["fid"])

    res = search(spec, cfg, dataset, device=device, progress=on_progress)
    (out_dir / f"{label}.safetensors").write_bytes(res.data)
    from trainer.ticket import generate, grid

    grid(generate(build_ticket(decode_mask(res.data), device), 0, 64, device=device), 8).save(
        out_dir / f"{label}-grid.png")
    record = {"label": label, "base": asdict(spec), "config": asdict(cfg), "features": embedder.name,
              "eval_n": eval_n, "real_n": int(len(real)), "real_split": real_split,
              "dataset": dataset.name, "random_mask": baseline, "points": points,
              "loss": [list(x) for x in losses[:: max(1, len(losses) // 500)]],
              "seconds_per_iteration": losses[-1][2] / max(1, losses[-1][0]) if losses else None,
              "mask_id": res.mask_id}
    (out_dir / f"{label}.json").write_text(json.dumps(record, indent=1))
    plot_curves(out_dir)
    return record


def plot_curves(out_dir: Path) -> Path:
    """KID vs iterations and vs seconds, and loss, for every study JSON in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in (json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))) if r["points"]]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, r in enumerate(runs):
        # ten colours, then a new line style and marker, so every run of a large study stays distinct
        style = dict(color=f"C{i % 10}", ls=("-", "--", "-.")[i // 10 % 3])
        pts = r["points"]
        it = [p["iteration"] for p in pts]
        sec = [p["seconds"] for p in pts]
        kid = [p["kid"] for p in pts]
        marker = "osD"[i // 10 % 3]
        ax[0].plot(it, kid, marker=marker, label=r["label"], **style)
        ax[1].plot(sec, kid, marker=marker, **style)
        ax[0].axhline(r["random_mask"]["kid"], color=style["color"], ls=":", lw=0.8)
        loss = np.array(r["loss"])
        ax[2].plot(loss[:, 0], loss[:, 1] / loss[0, 1], lw=0.8, **style)
    ax[0].set(xlabel="iteration", ylabel="KID (Inception)", title="KID vs iterations (dotted: random mask)")
    ax[1].set(xlabel="search seconds (evaluation excluded)", ylabel="KID", title="KID vs wall-clock")
    ax[2].set(xlabel="iteration", ylabel="loss / initial loss", title="moment-matching loss", yscale="log")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
