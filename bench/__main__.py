"""`python -m bench [--quick] [--device cuda] [--json PATH]` (`make bench`): every benchmark in
one run, written to docs/BENCHMARKS.md (tables, device, torch version, commit) and to JSON;
`--quick` writes docs/results/bench-quick.md and .json instead, so it never replaces the full
tables.

`--quick` keeps to about 10 minutes on a 2-core CPU: fewer rounds and steps, width 1 at batch
16 and 64 and width 0.25 at batch 16 for search, 1,000 registered domains. The full run adds
width 0.25 at batch 64, more rounds and steps, and 10,000 domains.

The results files name the commit they were measured at, so they are written only from a clean
tree (changes to the results files themselves aside): a run with uncommitted changes refuses
to write them unless `--allow-dirty`, which labels them so (with a hash of the diff). Other
paths (`--json /tmp/x.json --doc /tmp/x.md`) are written from any tree, labelled the same way.

`--device cuda` runs serving, search and the domains run on the GPU (masks built and unpacked
on the device; search with bf16 autocast beside the plain port, and at fp32 against it for an
equal-precision speed-up); fairness and the HTTP load stay on the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from bench import domains, fairness, http_load, mask_size, report, search_speed, serving

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
# the run's own outputs (relative to the repository): changing them does not change what is measured
OUTPUTS = ("docs/BENCHMARKS.md", "docs/results/")
LEGACY_KEYS = ("swap_cold_ms", "search_roofline")  # renamed (issue 23): swap_cold_build_ms, conv_share


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def provenance(root: Path = ROOT) -> dict:
    """The commit the code was measured at: {"commit", "dirty", "changed" (paths that differ
    from it, results files aside), "diff_sha256" (of those changes, or None)}."""
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=all")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True, "changed": ["(not a git checkout)"], "diff_sha256": None}
    changed = sorted(p for p in (line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines())
                     if not any(p == o or p.startswith(o) for o in OUTPUTS))
    digest = None
    if changed:
        h = hashlib.sha256(_git(root, "diff", "HEAD", "--binary", "--", *changed).encode())
        for p in changed:  # untracked files are not in the diff: their bytes are
            f = root / p
            if f.is_file() and p not in _git(root, "ls-files", "--", p):
                h.update(p.encode() + b"\0" + f.read_bytes())
        digest = h.hexdigest()
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20], "diff_sha256": digest}


def environment(root: Path = ROOT, device: str = "cpu") -> dict:
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None
    return {"date": datetime.date.today().isoformat(), **provenance(root),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "gpu_available": torch.cuda.is_available(),
            "device": f"cuda ({gpu})" if gpu else f"cpu ({os.cpu_count()} cores)"}


def is_results_file(path: Path, root: Path) -> bool:
    """Whether `path` is one of the committed results files (docs/BENCHMARKS.md, docs/results/*)."""
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return False
    return any(rel == o or rel.startswith(o) for o in OUTPUTS)


def main(argv: list[str] | None = None, root: Path = ROOT) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="default docs/results/bench[-quick].json")
    ap.add_argument("--doc", type=Path, default=None,
                    help="default docs/BENCHMARKS.md (the full run) or docs/results/bench-quick.md")
    ap.add_argument("--only", nargs="*", default=None,
                    help="sections: masks serving fairness search http domains")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where serving, search and the domains run (default cpu)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write the results files from a tree with uncommitted changes (labelled so)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "trainer", "service", "store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    q = args.quick
    path = args.json or root / "docs" / "results" / f"bench{'-quick' if q else ''}.json"
    doc = args.doc or (root / "docs" / "results" / "bench-quick.md" if q else root / "docs" / "BENCHMARKS.md")
    env = environment(root, args.device)
    if env["dirty"] and not args.allow_dirty and (is_results_file(path, root) or is_results_file(doc, root)):
        ap.error(f"the tree differs from commit {env['commit']} ({', '.join(env['changed'][:5])}"
                 f"{', ...' if len(env['changed']) > 5 else ''}): results files must name a clean "
                 "commit. Commit or stash the changes, write elsewhere with --json/--doc, or pass "
                 "--allow-dirty to label them as measured on uncommitted code.")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")
    dev = args.device
    sections = {
        "masks": lambda: mask_size.run(),
        "serving": lambda: serving.run(serving.parse(
            ["--width", "1", "--rounds", "3", "--images", "64" if q else "128", "--device", dev])),
        "fairness": lambda: fairness.run_http(widths=(0.25, 1.0), requests=40 if q else 120),
        "search": lambda: search_speed.run(
            [(1.0, 16), (1.0, 64), (0.25, 16)] if q else [(1.0, 16), (1.0, 64), (0.25, 16), (0.25, 64)],
            device=dev, steps=2 if q else 3, trials=3, warmup=1 if q else 2),
        "http": lambda: http_load.run(widths=(0.25, 1.0), duration_s=5 if q else 8, closed_rounds=3,
                                      open_duration_s=8 if q else 15,
                                      search_nice=(10,) if q else (10, 0)),
        "domains": lambda: domains.main(["--domains", "1000" if q else "10000", "--zipf-over", "1000",
                                         "--requests", "300" if q else "2000", "--device", dev]),
    }
    results: dict = {"environment": env, "quick": q, "seconds": {}, "errors": {}, "section_commits": {}}
    if args.only is not None and path.exists():  # a partial rerun keeps the other sections
        results = {"section_commits": {}, **json.loads(path.read_text()), "environment": env}
        for stale in LEGACY_KEYS:  # figures under their old names would be read as current
            results.pop(stale, None)
    for name, fn in sections.items():
        if args.only is not None and name not in args.only:
            continue
        t = time.monotonic()
        log.info("bench: %s ...", name)
        try:
            res = fn()
        except Exception as e:  # one broken section must not lose the others' figures
            log.exception("bench: %s failed", name)
            results.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            continue
        results.get("errors", {}).pop(name, None)
        results["seconds"][name] = round(time.monotonic() - t, 1)
        results["section_commits"][name] = env["commit"] + (" (uncommitted changes)" if env["dirty"] else "")
        if name == "serving":
            res = serving_figures(res)
        elif name == "domains":
            res = {"domains_registered": res}
        results.update(res)
        log.info("bench: %s done in %.0f s", name, results["seconds"][name])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(report.render(results))
    log.info("wrote %s and %s", path, doc)
    return results


def serving_figures(res: dict) -> dict:
    """The summary's serving figures, named for what they measure, from serving.run's result."""
    return {"masked_vs_dense": res["ratio_masked_vs_dense"],
            "mixed_vs_single": {"uniform": res["ratio_mixed_uniform_vs_one"],
                                "zipf": res["ratio_mixed_zipf_vs_one"]},
            # what a never-seen domain's first image costs over the same image warm (fetch,
            # decode, verify, keep on disk, build, a first pass on new weights), end to end
            "swap_cold_e2e_ms": res["cold_added_ms"],
            "cold_first_image_ms": res["cold_first_image_ms"],
            "swap_cold_build_ms": res["cold_switch_ms"],
            "swap_warm_ms": res["warm_switch_added_ms"],
            "swap_warm_pass_ms": res["request_2_images_ms"],
            "over_capacity": {k: res["over_capacity"][k] for k in
                              ("images_per_s", "one_domain_images_per_s", "evictions", "domains",
                               "resident_domains")},
            "serving_detail": res}


if __name__ == "__main__":
    main()
