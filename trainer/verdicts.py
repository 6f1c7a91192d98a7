"""A suite's records read over seeds: each row's mean and 95% interval, the paired comparisons
and trends its `[[compare]]` and `[[trend]]` tables name, the verdicts those intervals support
(trainer.seed_stats), the dense learning rate chosen on the train split, and quality against
budget (a row's snapshots on held-out data, against iterations and the search's seconds).
"""
from __future__ import annotations

import math
from collections import defaultdict

from trainer.seed_stats import (
    mean_interval,
    noise_split,
    paired_difference,
    slope_interval,
    verdict,
)

METRICS = ("kid", "fid", "precision", "recall", "density", "coverage")


def by_row(records: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(dataset, row) -> seed -> record."""
    out: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in records:
        out[(r["dataset"], r.get("row", r["run"]))][int(r.get("seed", r.get("search", {}).get("seed", 0)))] = r
    return dict(out)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def row_summary(dataset: str, row: str, seeds: dict[int, dict]) -> dict:
    rs = [seeds[s] for s in sorted(seeds)]
    out = {"dataset": dataset, "row": row, "method": rs[0]["method"], "seeds": sorted(seeds),
           "claims": rs[0].get("claims", []),
           "noise": noise_split([r["kid"] for r in rs], [r.get("kid_std", 0.0) for r in rs])}
    for m in METRICS:
        vals = [r[m] for r in rs if _finite(r.get(m))]
        out[m] = mean_interval(vals).as_dict() if vals else None
    return out


def _compared_rows(suite, rows: dict[tuple[str, str], dict[int, dict]]):
    """(what the compare is, a's seeds, b's seeds) for each `[[compare]]` on each dataset holding
    both of its rows; the first is the head of its entry in a summary."""
    for c in suite.compare:
        for d in dict.fromkeys(d for d, _ in rows):
            a, b = rows.get((d, c["a"])), rows.get((d, c["b"]))
            if a and b:
                yield ({"claim": c["claim"], "what": c.get("what", ""), "dataset": d, "a": c["a"], "b": c["b"],
                        "metric": c.get("metric", "kid"), "expect": c["expect"]}, a, b)


def _paired_gap(expect: str, a: dict[int, float], b: dict[int, float]) -> dict | None:
    """b - a paired over the seeds both have: those seeds, the difference's interval and the
    verdict it gives on `expect`; None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    iv = paired_difference(a, b)
    return {"seeds": seeds, "difference": iv.as_dict(), "verdict": verdict(iv, expect)}


def summarise(suite, records: list[dict]) -> dict:
    """Rows, comparisons, trends, the dense rate choice and budget curves of a suite's records."""
    rows = by_row(records)
    out: dict = {"rows": [row_summary(d, r, s) for (d, r), s in rows.items()], "comparisons": [], "trends": []}
    datasets = list(dict.fromkeys(d for d, _ in rows))
    for head, a, b in _compared_rows(suite, rows):
        m = head["metric"]
        gap = _paired_gap(head["expect"], {s: r[m] for s, r in a.items()}, {s: r[m] for s, r in b.items()})
        if gap:
            out["comparisons"].append({**head, **gap})
    for t in suite.trends:
        metric = t.get("metric", "kid")
        for d in datasets:
            have = [rows[(d, r)] for r in t["rows"] if (d, r) in rows]
            common = set.intersection(*(set(x) for x in have)) if len(have) >= 2 else set()
            xs = {x[min(common)][t["x"]] for x in have} if common else set()
            if len(xs) < 2:
                continue
            pts = {s: [(x[s][t["x"]], x[s][metric]) for x in have] for s in sorted(common)}
            iv = slope_interval(pts)
            out["trends"].append({"claim": t["claim"], "what": t.get("what", ""), "dataset": d, "x": t["x"],
                                  "metric": metric, "rows": [r for r in t["rows"] if (d, r) in rows],
                                  "expect": t["expect"], "seeds": sorted(common), "slope": iv.as_dict(),
                                  "verdict": verdict(iv, t["expect"])})
    out["dense_choice"] = dense_choice(rows)
    out["budget"] = budget_curves(rows)
    out["budget_gaps"] = budget_gaps(suite, rows)
    return out


def dense_choice(rows: dict[tuple[str, str], dict[int, dict]]) -> list[dict]:
    """Per dataset, the dense study's rate with the lowest mean KID on the TRAIN split (each run's
    final snapshot), so the rate is not chosen on the held-out split it is reported on; and
    whether it sits at an edge of the grid (then the grid must be extended)."""
    out = []
    for d in dict.fromkeys(d for d, _ in rows):
        cands = []
        for (dd, row), seeds in rows.items():
            rs = list(seeds.values())
            if dd != d or rs[0]["method"] != "dense" or "dense" not in rs[0].get("claims", []):
                continue
            train = [r["selection"][-1]["train"]["kid"] for r in rs
                     if r.get("selection") and r["selection"][-1]["iteration"] == r["iterations"]]
            if train:
                cands.append({"row": row, "lr": rs[0]["lr"], "seeds": sorted(seeds),
                              "train_kid": mean_interval(train).as_dict()})
        if len(cands) < 2:
            continue
        cands.sort(key=lambda c: c["lr"])
        best = min(cands, key=lambda c: c["train_kid"]["mean"])
        out.append({"dataset": d, "rates": cands, "best_row": best["row"], "best_lr": best["lr"],
                    "at_edge": best is cands[0] or best is cands[-1]})
    return out


def budget_curves(rows: dict[tuple[str, str], dict[int, dict]]) -> list[dict]:
    """Rows of the `budget` claim: held-out KID and FID at each snapshot iteration, mean and
    interval over the seeds that reached it, with the mean search seconds (wall-clock and the
    process's CPU seconds) to get there."""
    out = []
    for (d, row), seeds in rows.items():
        rs = [seeds[s] for s in sorted(seeds)]
        if "budget" not in rs[0].get("claims", []):
            continue
        if rs[0]["method"] == "random":  # nothing is trained: one level at every budget
            out.append({"dataset": d, "row": row, "method": "random", "seeds": sorted(seeds), "points": [],
                        "level": {m: mean_interval([r[m] for r in rs]).as_dict() for m in ("kid", "fid")}})
            continue
        at: dict[int, list[dict]] = defaultdict(list)
        for r in rs:
            for p in r.get("selection", []):
                at[p["iteration"]].append(p)
        pts = [{"iteration": it, "seeds": len(ps),
                # wall and CPU seconds (nan where a snapshot lacks them: CPU before they were kept)
                **{k: round(sum(p.get(k, math.nan) for p in ps) / len(ps), 1) for k in ("seconds", "cpu_seconds")},
                **{m: mean_interval([p["heldout"][m] for p in ps]).as_dict() for m in ("kid", "fid")}}
               for it, ps in sorted(at.items())]
        out.append({"dataset": d, "row": row, "method": rs[0]["method"], "seeds": sorted(seeds), "points": pts})
    return out


def budget_gaps(suite, rows: dict[tuple[str, str], dict[int, dict]]) -> list[dict]:
    """Each `[[compare]]` of two rows with snapshots, read along the budget: the paired held-out
    difference b - a at every snapshot iteration both rows reached (over the seeds both reached it
    with), with its interval and verdict. Whether the ticket closes on the dense model, passes it
    or falls behind is the sign of these intervals from one iteration to the next."""
    out = []
    for head, a, b in _compared_rows(suite, rows):
        m = head["metric"]
        if m not in ("kid", "fid"):  # what a snapshot measures
            continue
        snaps = [{s: {p["iteration"]: p["heldout"][m] for p in r.get("selection", [])}
                  for s, r in x.items()} for x in (a, b)]
        its = sorted({it for x in snaps for per_seed in x.values() for it in per_seed})
        pts = []
        for it in its:
            gap = _paired_gap(head["expect"], *({s: v[it] for s, v in x.items() if it in v} for x in snaps))
            if gap:
                pts.append({"iteration": it, **gap})
        if pts:
            out.append({**head, "points": pts})
    return out
