"""`python -m bench [--quick] [--json PATH]` (`make bench`): every benchmark in one run, written
to docs/BENCHMARKS.md (tables, device, torch version, commit) and to JSON; `--quick` writes
docs/results/bench-quick.md and .json instead, so it never replaces the full tables.

`--quick` keeps to about 10 minutes on a 2-core CPU: fewer rounds and steps, widths 1 and
0.25 at batch 16 for search, 1,000 registered domains. The full run adds batch 64, more
rounds, and 10,000 domains.
"""
from __future__ import annotations

import argparse
import datetime
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


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"date": datetime.date.today().isoformat(), "commit": commit + ("+dirty" if dirty else ""),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "device": f"cuda ({gpu})" if gpu else f"cpu ({os.cpu_count()} cores)"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="default docs/results/bench[-quick].json")
    ap.add_argument("--doc", type=Path, default=None,
                    help="default docs/BENCHMARKS.md (the full run) or docs/results/bench-quick.md")
    ap.add_argument("--only", nargs="*", default=None,
                    help="sections: masks serving fairness search http domains")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "trainer", "service", "store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    q = args.quick
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sections = {
        "masks": lambda: mask_size.run(),
        "serving": lambda: serving.run(serving.parse(
            ["--width", "1", "--rounds", "3", "--images", "64" if q else "128"])),
        "fairness": lambda: fairness.run(width=0.25, requests=40 if q else 120),
        "search": lambda: search_speed.run(
            [(1.0, 16), (0.25, 16)] if q else [(1.0, 16), (1.0, 64), (0.25, 16), (0.25, 64)],
            device=device, steps=2 if q else 4),
        "http": lambda: http_load.run(width=0.25, duration_s=10 if q else 30),
        "domains": lambda: domains.main(["--domains", "1000" if q else "10000", "--zipf-over", "1000",
                                         "--requests", "300" if q else "2000"]),
    }
    path = args.json or ROOT / "docs" / "results" / f"bench{'-quick' if q else ''}.json"
    results: dict = {"environment": environment(), "quick": q, "seconds": {}, "errors": {}}
    if args.only is not None and path.exists():  # a partial rerun keeps the other sections
        results = {**json.loads(path.read_text()), "environment": results["environment"]}
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
        if name == "serving":
            res = {"masked_vs_dense": res["ratio_masked_vs_dense"],
                   "mixed_vs_single": {"uniform": res["ratio_mixed_uniform_vs_one"],
                                       "zipf": res["ratio_mixed_zipf_vs_one"]},
                   "swap_cold_ms": res["cold_switch_ms"], "swap_warm_ms": res["warm_switch_added_ms"],
                   "serving_detail": res}
        elif name == "domains":
            res = {"domains_registered": res}
        results.update(res)
        log.info("bench: %s done in %.0f s", name, results["seconds"][name])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    doc = args.doc or (ROOT / "docs" / "results" / "bench-quick.md" if q else ROOT / "docs" / "BENCHMARKS.md")
    doc.write_text(report.render(results))
    log.info("wrote %s and %s", path, doc)
    return results


if __name__ == "__main__":
    main()
