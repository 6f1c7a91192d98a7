"""`python -m trainer`: search, generate, evaluate, inspect, and the paper's baselines."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import fields
from pathlib import Path

from trainer.generator import BaseSpec

log = logging.getLogger("trainer")

K_HELP = "fraction of weights KEPT (the paper's k): 0.1 keeps 10%% and prunes 90%%"


def _count(text: str) -> int:
    """argparse type: an image count, 1 to 100,000."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000, got {n}")
    return n


def _device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N."""
    from trainer.settings import check_device_name

    try:
        return check_device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _served_base() -> BaseSpec:
    """SLT_BASE as the service reads it (a bad value: the paper's base, and _spec reports it)."""
    from trainer.settings import get_settings

    try:
        return get_settings().base_spec
    except (ValueError, TypeError):  # reported by _spec when a command runs
        return BaseSpec()


def _base_args(p: argparse.ArgumentParser) -> None:
    d = _served_base()
    b = p.add_argument_group(
        "base (the frozen random generator; never stored, rebuilt from these)",
        "Each option defaults to SLT_BASE, the base the service serves (unset: the paper's GFMN at "
        f"width 1), so a mask searched here is one the service accepts. Now: width {d.width:g}, "
        f"init {d.init}, base seed {d.seed}, nz {d.nz}. `make run` and compose serve SLT_BASE=width=0.25.")
    b.add_argument("--init", choices=["signed_constant", "kaiming_normal"],
                   help=f"random init of the base: signed Kaiming constant (paper's best) or Kaiming "
                        f"normal (default {d.init}, from SLT_BASE)")
    b.add_argument("--base-seed", type=int, help=f"seed of the base weights, not of the search "
                                                 f"(default {d.seed}, from SLT_BASE)")
    b.add_argument("--width", type=float, help=f"channel width multiplier of the GFMN ResNet "
                                                f"(default {d.width:g}, from SLT_BASE)")
    b.add_argument("--nz", type=int, help=f"latent size (default {d.nz}, from SLT_BASE)")


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="image folder/zip, CelebA, LSUN lmdb or CIFAR-10 folder")
    p.add_argument("--preset", choices=["paper", "fast", "demo"],
                   help="named settings (default: paper, exactly as published: Eq. 3 summed, AMA, VGG19 "
                        "features, which it never swaps for another; demo: about 10 min on a 2-core "
                        "CPU at base width 0.25, far longer at width 1); explicit options override them")
    p.add_argument("--k", type=float, help=K_HELP + " (default 0.1)")
    p.add_argument("--iterations", type=int, help="optimisation steps (paper: 2,000,000)")
    p.add_argument("--batch-size", type=int, help="generated images per step (paper: 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (paper: 5e-5, cosine-annealed)")
    p.add_argument("--seed", type=int, help="seeds the scores and latents of the search, never the base")
    p.add_argument("--features", choices=["vgg19", "vgg16-keras", "random"],
                   help="perceptual features matched: vgg19 (paper), vgg16-keras (offline), random (tests only)")
    p.add_argument("--device", type=_device_name, default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUT + .ckpt)")
    p.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps")
    p.add_argument("--schedule", choices=["cosine", "constant"], help="learning-rate schedule")
    p.add_argument("--ama", action=argparse.BooleanOptionalAction,
                   help="GFMN's Adam moving average of the moment differences (paper: on; demo, fast: off); "
                        "--no-ama uses the batch moments directly")
    p.add_argument("--ama-lr", type=float, help="AMA's Adam step on the moving average (paper: 1e-5)")
    p.add_argument("--reduction", choices=["sum", "layer-mean"],
                   help="over features: sum (the paper's Eq. 3) or a per-layer mean (this project's, demo/fast)")
    p.add_argument("--layer-norm", action=argparse.BooleanOptionalAction,
                   help="weight each feature layer by 1 / its real mean square (this project's, demo/fast)")
    p.add_argument("--var-weight", type=float, help="weight of the variance terms (paper: 1)")
    p.add_argument("--unbiased-var", action=argparse.BooleanOptionalAction,
                   help="unbiased variances on both sides, as the released code (paper preset: on)")
    p.add_argument("--bias-score-range", type=float,
                   help="bias scores U(-r, r) (released code and paper preset: 1; demo/fast: 0.1)")
    p.add_argument("--global-threshold", choices=["separate", "joint"],
                   help="global pruning ranks weights and biases apart (released, paper preset) or jointly")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast and channels_last on CUDA (default on there; never on CPU); "
                        "recorded in the mask as its precision")
    p.add_argument("--bn-batches", type=int, help="batches for the final BatchNorm statistics")
    p.add_argument("--domain", default="", help="domain name recorded in the file")
    _base_args(p)


def _config(a: argparse.Namespace, **extra):
    from trainer.search import SearchConfig, config_from

    names = {f.name for f in fields(SearchConfig)}
    given = {k: v for k, v in vars(a).items() if k in names and v is not None}
    given.update({k: v for k, v in extra.items() if v is not None})
    return config_from(a.preset, **given)


def _spec(a: argparse.Namespace) -> BaseSpec:
    """The base of the options, each one not given taken from SLT_BASE (the served base)."""
    from trainer.settings import get_settings

    d = get_settings().base_spec  # a bad SLT_BASE is a clear error here
    spec = BaseSpec(nz=d.nz if a.nz is None else a.nz, width=d.width if a.width is None else a.width,
                    init=a.init or d.init, seed=d.seed if a.base_seed is None else a.base_seed)
    if getattr(a, "preset", None) == "demo" and a.width is None and spec.width > 0.25:
        log.warning("the demo preset's ~10 minutes are for the width-0.25 base that `make run` serves; "
                    "this base is width %g (SLT_BASE), slower per iteration (2.6x at width 1 on a 2-core "
                    "CPU), and a running `make run` server would refuse its mask. Pass --width 0.25 or "
                    "export SLT_BASE=width=0.25 to match that server.", spec.width)
    return spec


def _device(a: argparse.Namespace) -> str:
    from trainer.settings import get_settings, resolve_device

    return resolve_device(a.device or get_settings().device)


class _Bar:
    """tqdm progress for a search, with loss and learning rate."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="it", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, p) -> None:
        self.bar.n = p.iteration
        self.bar.set_postfix(loss=f"{p.loss:.4g}", lr=f"{p.lr:.2e}", keep=f"{p.keep:.3f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def cmd_search(a: argparse.Namespace) -> int:
    from trainer.data import open_dataset
    from trainer.masks import decode_mask, write_mask_file
    from trainer.search import search

    cfg = _config(a)
    out = Path(a.out)
    ds = open_dataset(a.dataset)
    ckpt = a.checkpoint or out.with_name(out.name + ".ckpt")
    bar = _Bar(cfg.iterations) if cfg.pruning != "random" else None
    try:
        res = search(_spec(a), cfg, ds, domain=a.domain or ds.name, device=_device(a),
                     progress=bar, checkpoint=ckpt, resume=a.resume, from_weights=a.from_weights)
    finally:
        if bar:
            bar.close()
    write_mask_file(out, res.data)
    ckpt.unlink(missing_ok=True)
    info = decode_mask(res.data).info()
    log.info("wrote %s: mask %s, kept %.4f of %d weights, %.3f bits/weight, %.1f s, final loss %.5g",
             out, info["mask_id"][:12], info["kept_fraction"], info["weights"],
             info["bits_per_weight"], res.seconds, res.final_loss)
    final = None if math.isnan(res.final_loss) else res.final_loss  # JSON has no NaN
    print(json.dumps({"mask_id": info["mask_id"], "out": str(out), "seconds": round(res.seconds, 2),
                      "final_loss": final, "kept_fraction": info["kept_fraction"]}))
    return 0


def _train_cmd(a: argparse.Namespace, kind: str) -> int:
    from trainer.data import open_dataset
    from trainer.masks import read_mask_file, write_mask_file
    from trainer.search import finetune, train_dense

    cfg = _config(a)
    ds = open_dataset(a.dataset)
    out = Path(a.out)
    ckpt = a.checkpoint or out.with_name(out.name + ".ckpt")
    bar = _Bar(cfg.iterations)
    kw = dict(progress=bar, checkpoint=ckpt, resume=a.resume)
    try:
        if kind == "dense":
            res = train_dense(_spec(a), cfg, ds, device=_device(a), **kw)
        else:
            res = finetune(read_mask_file(a.mask), cfg, ds, device=_device(a), base=base_weights(a), **kw)
    finally:
        bar.close()
    write_mask_file(out, res.data)
    ckpt.unlink(missing_ok=True)
    print(json.dumps({"out": str(out), "kind": kind, "seconds": round(res.seconds, 2),
                      "final_loss": res.final_loss}))
    return 0


def _load_generator(a: argparse.Namespace, device: str):
    """A generator from --mask (base x mask) or --weights (a dense weights file)."""
    if getattr(a, "weights", None):
        from trainer.search import weights_generator

        return weights_generator(Path(a.weights), device), {"weights": str(a.weights)}
    from trainer.masks import read_mask_file
    from trainer.ticket import build_ticket

    mask = read_mask_file(a.mask)
    return build_ticket(mask, device, base=base_weights(a)), {"mask_id": mask.mask_id}


def base_weights(a: argparse.Namespace):
    """The trained generator of --base-weights (the base a `search --from-weights` mask prunes)."""
    if not getattr(a, "base_weights", None):
        return None
    from trainer.search import weights_generator

    return weights_generator(Path(a.base_weights))


def cmd_generate(a: argparse.Namespace) -> int:
    from PIL import Image

    from trainer.ticket import generate, grid

    g, _ = _load_generator(a, _device(a))
    images = generate(g, a.seed, a.n, device=_device(a))
    out = Path(a.out)
    if a.out.endswith("/") or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im).save(out / f"{i:04d}.png")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid(images, a.nrow).save(out)
    log.info("wrote %d images to %s", a.n, out)
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from trainer.masks import read_mask_file

    print(json.dumps(read_mask_file(a.mask).info(), indent=1, sort_keys=True))
    return 0


def cmd_curve(a: argparse.Namespace) -> int:
    from trainer.curve import run_curve
    from trainer.data import open_dataset
    from trainer.metrics.embed import load_eval_embedder

    device = _device(a)
    rec = run_curve(_spec(a), _config(a), open_dataset(a.dataset), a.out, a.label,
                    load_eval_embedder("inception", device), a.eval_every, a.eval_n, device, a.split)
    print(json.dumps({"label": rec["label"], "random_mask_kid": rec["random_mask"]["kid"],
                      "points": rec["points"]}, indent=1))
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from trainer.reproduce import run_suite

    if a.jobs < 1:
        raise ValueError(f"--jobs must be 1 or more, got {a.jobs}")
    records = run_suite(a.config, a.dataset, a.out, a.docs, _device(a), report_only=a.report, jobs=a.jobs)
    print(json.dumps([{k: r[k] for k in ("dataset", "run", "method", "kid", "fid", "seconds")}
                      for r in records], indent=1))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_cli

    print(json.dumps(evaluate_cli(a), indent=1, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a mask (edge-popup + moment matching) for a dataset",
                       description="Search a binary mask over the frozen random base so that the kept "
                                   "subnetwork's feature moments match the dataset's.")
    s.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    s.add_argument("--pruning", choices=["local", "global", "gradual", "random"],
                   help="local: top-k per layer (paper); global: top-k over all layers; gradual: from "
                        "dense down to k on a cubic schedule; random: a random mask at k (baseline)")
    s.add_argument("--gradual-steps", type=int, help="gradual pruning reaches k at this step (default: half)")
    s.add_argument("--dense-layers", nargs="*", metavar="LAYER",
                   help="layer-freeze: keep these layers dense (e.g. input output)")
    s.add_argument("--from-weights", type=Path,
                   help="prune this trained dense weights file instead of the random base (baseline)")
    _search_args(s)
    s.set_defaults(func=cmd_search)

    d = sub.add_parser("train-dense", help="baseline: train a dense Xavier-init generator with the same loss")
    d.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    _search_args(d)
    d.set_defaults(func=lambda a: _train_cmd(a, "dense"))

    f = sub.add_parser("finetune", help="baseline: fine-tune the kept weights of a found ticket")
    f.add_argument("--mask", required=True, help="the ticket's mask file")
    f.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    f.add_argument("--base-weights", type=Path,
                   help="the trained weights file a `search --from-weights` mask prunes (its base)")
    _search_args(f)
    f.set_defaults(func=lambda a: _train_cmd(a, "finetune"))

    g = sub.add_parser("generate", help="images from a mask (or a dense weights file)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--mask", help="mask file")
    src.add_argument("--weights", help="dense weights file (train-dense / finetune output)")
    g.add_argument("--base-weights", type=Path,
                   help="the trained weights file a `search --from-weights` mask prunes (its base)")
    g.add_argument("--n", type=_count, default=16, help="number of images (1 to 100,000)")
    g.add_argument("--seed", type=int, default=0, help="image i of a seed is the same whatever --n is")
    g.add_argument("--out", required=True, help="FILE.png for a grid, or DIR/ for one PNG per image")
    g.add_argument("--nrow", type=_count, help="images per grid row")
    g.add_argument("--device", type=_device_name, default=None, help="auto (default), cpu, cuda or cuda:N")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="FID, KID, precision/recall, density/coverage as JSON")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--mask", help="mask file")
    src.add_argument("--weights", help="dense weights file")
    src.add_argument("--images", help="a folder of images to score instead of a generator")
    e.add_argument("--base-weights", type=Path,
                   help="the trained weights file a `search --from-weights` mask prunes (its base)")
    e.add_argument("--dataset", required=True, help="real images to compare with")
    e.add_argument("--n", type=_count, default=10000, help="images per side (default 10k vs 10k)")
    e.add_argument("--split", choices=["heldout", "train", "all"], default="heldout",
                   help="real side: held-out (report) or train (choose checkpoints)")
    e.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    e.add_argument("--pr-k", type=int, choices=[3, 5], default=3,
                   help="precision/recall neighbourhood: 3 (Kynkaanniemi et al., default) or 5 (the "
                        "paper's released code; its reproduction tables use 5)")
    e.add_argument("--features", choices=["inception", "vgg16-keras"], default="inception",
                   help="embedding: the standard FID Inception (falls back to vgg16-keras, marked)")
    e.add_argument("--device", type=_device_name, default=None, help="auto (default), cpu, cuda or cuda:N")
    e.add_argument("--record", action="store_true",
                   help="also record the result beside the mask in the $SLT_HOME/masks catalog")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("curve", help="time to quality: a search with KID/FID against iterations and seconds")
    c.add_argument("--out", required=True, type=Path, help="study folder (JSON, masks, grids, curves.png)")
    c.add_argument("--label", required=True, help="name of this run in the study")
    c.add_argument("--eval-every", type=_count, default=50, help="evaluate every N iterations")
    c.add_argument("--eval-n", type=_count, default=256, help="generated images per evaluation")
    c.add_argument("--split", choices=["all", "heldout", "train"], default="all",
                   help="real side of KID/FID: all (the study's measure: the whole dataset, as small "
                        "domains need), or heldout, which the search never saw")
    c.add_argument("--pruning", choices=["local", "global", "gradual"], help="pruning mode")
    c.add_argument("--gradual-steps", type=int, help="gradual pruning reaches k at this step")
    _search_args(c)
    c.set_defaults(func=cmd_curve)

    r = sub.add_parser("reproduce", help="the paper's claims: a resumable suite of runs, tables, plots",
                       description="Run a suite of searches and baselines (trainer/suites/<config>.toml), "
                                   "each at most once: finished runs are kept, an interrupted one resumes "
                                   "from its checkpoint. Writes DOCS/results/<config>.json and .md and "
                                   "DOCS/images/<config>/.")
    r.add_argument("--config", required=True,
                   help="quick (a 2-core CPU, about 3.5 hours), budget (about 4 hours at --jobs 2), full (a GPU), "
                        "or a suite .toml path")
    r.add_argument("--dataset", action="append",
                   help="dataset name ($SLT_HOME/datasets) or path; repeat for more (default: the suite's)")
    r.add_argument("--out", type=Path, help="artifacts and run records (default $SLT_HOME/reproduce/<config>)")
    r.add_argument("--docs", type=Path, default=Path("docs"), help="where results and images go (default docs)")
    r.add_argument("--device", type=_device_name, default=None, help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process with its share of the cores as torch "
                        "threads (default 1); on a 2-core CPU, --jobs 2 gets through about 12%% more "
                        "and keeps each run's CPU seconds honest while other work shares the cores")
    r.add_argument("--report", action="store_true",
                   help="run nothing: results, tables and plots from the runs finished so far (here, "
                        "or committed under DOCS/results/<config>/), marked part way where some are not")
    r.set_defaults(func=cmd_reproduce)

    i = sub.add_parser("inspect", help="a mask file's metadata as JSON")
    i.add_argument("mask", help="mask file")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from trainer.features import FeatureWeightsUnavailable
    from trainer.masks import MaskError
    from trainer.search import SearchCancelled

    errors: tuple[type[BaseException], ...] = (
        MaskError, ValueError, OSError, SearchCancelled, FeatureWeightsUnavailable)
    try:
        return a.func(a)
    except errors as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; a checkpoint (if any) allows --resume")
        return 130
