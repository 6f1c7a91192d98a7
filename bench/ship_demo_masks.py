"""Search, measure and write the demo masks shipped in `worker/shipped/`.

For each demo dataset: one long search (resumable: `--resume` continues from the checkpoint
beside the output), then KID/FID on the standard Inception features of `--eval-n` generated
images against all of the dataset's images, the same for a random mask at the same k, and the KID between the
two vendors' real images (the bar: "as close as another real emoji set"). The figures go into
the mask's `metrics` metadata and into `worker/shipped/README.md`.

    python bench/ship_demo_masks.py --iterations 3000 --preset demo
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from trainer.curve import compare, score
from trainer.data import open_dataset
from trainer.evaluate import real_features
from trainer.generator import BaseSpec
from trainer.masks import decode_mask, with_metrics, write_mask_file
from trainer.metrics.embed import load_eval_embedder
from trainer.search import config_from, random_mask, search
from trainer.settings import get_settings
from trainer.ticket import build_ticket, generate, grid

log = logging.getLogger("ship")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ("emoji-google", "emoji-twitter")
KID_SUBSETS = 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, help="folder holding emoji-google/ and emoji-twitter/ "
                   "(default: $SLT_HOME/datasets, as `make data` installs them)")
    p.add_argument("--only", choices=DEMO, help="search this one only (the bar still uses both)")
    p.add_argument("--out", type=Path, default=ROOT / "worker" / "shipped")
    p.add_argument("--width", type=float, default=0.25, help="base width (make run serves 0.25)")
    p.add_argument("--preset", default="demo")
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--k", type=float)
    p.add_argument("--pruning", choices=["local", "global", "gradual"])
    p.add_argument("--warmup", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=512, help="generated images per evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    root = a.datasets or get_settings().home / "datasets"
    data = {name: open_dataset(root / name) for name in DEMO}
    spec = BaseSpec(width=a.width)
    cfg = config_from(a.preset, iterations=a.iterations, batch_size=a.batch_size, lr=a.lr, k=a.k,
                      pruning=a.pruning, warmup=a.warmup, seed=a.seed)
    embedder = load_eval_embedder("inception", a.device)
    # every real image (cached: the same features `trainer curve` uses)
    real = {name: real_features(ds, "all", 10_000, embedder) for name, ds in data.items()}
    bar_kid = compare(real["emoji-twitter"], real["emoji-google"], KID_SUBSETS)["kid"]
    log.info("KID between the two vendors' real images: %.4f", bar_kid)
    # what decides the mask (no local paths): enough to search it again
    opts = {"--only": a.only, "--width": a.width, "--preset": a.preset, "--iterations": a.iterations,
            "--batch-size": a.batch_size, "--lr": a.lr, "--k": a.k, "--pruning": a.pruning, "--warmup": a.warmup,
            "--seed": a.seed}
    command = "python bench/ship_demo_masks.py " + " ".join(
        f"{k} {shlex.quote(str(v))}" for k, v in opts.items() if v is not None)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [a.only] if a.only else DEMO:
        ds, other = data[name], next(n for n in DEMO if n != name)
        out = a.out / f"{name}.safetensors"
        with tqdm(total=cfg.iterations, desc=f"search {name}", unit="it") as bar:
            def progress(pr, bar=bar):
                bar.n = pr.iteration
                bar.set_postfix(loss=f"{pr.loss:.3g}")
                bar.refresh()
            res = search(spec, cfg, ds, domain=name, device=a.device, progress=progress,
                         checkpoint=out.with_suffix(".ckpt"), resume=a.resume)
        mask = decode_mask(res.data)
        rand = decode_mask(random_mask(spec, cfg, ds.dataset_sha256, name, a.device))
        m, r = (score(build_ticket(x, a.device), embedder, real[name], a.eval_n, 0, a.device, KID_SUBSETS)
                for x in (mask, rand))
        metrics = {**m, "random_mask_kid": r["kid"], "random_mask_fid": r["fid"],
                   "real_other_vendor_kid": compare(real[other], real[name], KID_SUBSETS)["kid"],
                   "eval": {"features": embedder.name, "n_generated": a.eval_n,
                            "n_real": int(len(real[name])), "split": "all", "seed": 0},
                   "search_seconds": round(res.seconds, 1), "command": command,
                   "config": asdict(cfg)}
        write_mask_file(out, with_metrics(res.data, metrics))
        out.with_suffix(".ckpt").unlink(missing_ok=True)
        grid(generate(build_ticket(mask, a.device), 0, 64, device=a.device), 8).save(a.out / f"{name}-grid.png")
        log.info("%s: KID %.4f (random %.4f, other vendor %.4f) FID %.1f in %.0f s", name, m["kid"],
                 r["kid"], metrics["real_other_vendor_kid"], m["fid"], res.seconds)
        rows.append((name, metrics))
    summary = a.out / "metrics.json"  # merged, so `--only` runs add up
    old = json.loads(summary.read_text()) if summary.is_file() else {"masks": {}}
    summary.write_text(json.dumps(
        {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "base": asdict(spec),
         "real_vendor_kid": bar_kid, "masks": {**old["masks"], **dict(rows)}}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
