"""docs/RESULTS.md against the records it reports: the committed `quick` results are the suite's
runs as now defined, their summary is what the seed statistics make of those runs, and every
verdict RESULTS.md states is that summary's, interval and all; the same for the `budget` suite's
finished runs, its verdicts and its paired gap at every snapshot. A verdict edited by hand, a run
added to the suite without re-running the report, or a record changed under the page fails here.
(The interval and paired-test code itself is checked against scipy in test_seed_stats.py.)"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.reproduce import _iv, load_suite
from trainer.verdicts import summarise

ROOT = Path(__file__).resolve().parents[2]
RESULTS = (ROOT / "docs" / "RESULTS.md").read_text()
QUICK = json.loads((ROOT / "docs" / "results" / "quick.json").read_text())
BUDGET = json.loads((ROOT / "docs" / "results" / "budget.json").read_text())


def _id(r: dict) -> tuple[str, str]:
    return r["dataset"], r["run"]


def _verdict_row(v: dict) -> str:
    """A comparison as RESULTS.md's verdict tables state it."""
    return (f"| {v['claim']} | {v['what']} | {v['dataset']} | {v['metric']} | `{v['a']}` | `{v['b']}` | "
            f"{_iv(v['difference'])} | {len(v['seeds'])} | **{v['verdict']}** |")


def test_the_quick_results_hold_every_run_of_the_suite_once_each_with_its_committed_record():
    suite = load_suite("quick")
    planned = {(d, r.id) for r in suite.runs for d in (QUICK["datasets"] if r.datasets == "all"
                                                        else QUICK["datasets"][:1])}
    got = [_id(r) for r in QUICK["runs"]]
    assert len(got) == len(set(got)) and set(got) == planned
    assert QUICK["runs_finished"] == QUICK["runs_planned"] == len(planned)
    for r in QUICK["runs"]:  # the per-run records the background suite committed are these
        rec = json.loads((ROOT / "docs" / "results" / "quick" / r["dataset"] / f"{r['run']}.json").read_text())
        assert (rec["kid"], rec["fid"], rec["search"], rec["seed"]) == (r["kid"], r["fid"], r["search"], r["seed"])


def test_the_stored_summary_is_what_the_suite_makes_of_its_runs():
    again = json.loads(json.dumps(summarise(load_suite("quick"), QUICK["runs"])))
    stored = QUICK["summary"]
    for key in ("comparisons", "trends", "dense_choice"):
        assert again[key] == stored[key], key
    assert [(r["dataset"], r["row"], r["kid"]) for r in again["rows"]] == \
           [(r["dataset"], r["row"], r["kid"]) for r in stored["rows"]]


def test_results_md_states_every_verdict_as_the_summary_has_it():
    for v in QUICK["summary"]["comparisons"]:
        assert _verdict_row(v) in RESULTS, _verdict_row(v)
    for v in QUICK["summary"]["trends"]:
        rows = ", ".join(f"`{r}`" for r in v["rows"])
        row = (f"| {v['claim']} | {v['what']} | {v['dataset']} | {v['metric']} | {rows} | {_iv(v['slope'])} | "
               f"{len(v['seeds'])} | **{v['verdict']}** |")
        assert row in RESULTS, row


def test_results_md_names_the_dense_rate_the_study_chose():
    for c in QUICK["summary"]["dense_choice"]:
        assert not c["at_edge"], c  # issue 25: the grid is extended until its best is inside it
        assert f"best on the train split: Adam {c['best_lr']:g}" in RESULTS


def test_the_budget_results_hold_every_committed_budget_record_and_only_planned_runs():
    suite = load_suite("budget")
    planned = {(d, r.id) for r in suite.runs for d in BUDGET["datasets"]}
    got = [_id(r) for r in BUDGET["runs"]]
    committed = {(p.parent.name, p.stem) for p in (ROOT / "docs" / "results" / "budget").glob("*/*.json")}
    # the report was made again after the last record landed, and holds nothing else
    assert len(got) == len(set(got)) and set(got) == committed and set(got) <= planned
    assert BUDGET["runs_finished"] == len(got) and BUDGET["runs_planned"] == len(planned)
    for r in BUDGET["runs"]:
        rec = json.loads((ROOT / "docs" / "results" / "budget" / r["dataset"] / f"{r['run']}.json").read_text())
        assert (rec["kid"], rec["selection"], rec["search"], rec["seed"]) == \
               (r["kid"], r["selection"], r["search"], r["seed"])


def test_the_stored_budget_summary_is_what_the_suite_makes_of_its_runs():
    again = json.loads(json.dumps(summarise(load_suite("budget"), BUDGET["runs"])))
    for key in ("comparisons", "budget", "budget_gaps"):
        assert again[key] == BUDGET["summary"][key], key


def test_results_md_states_the_budget_verdicts_and_the_gap_at_every_snapshot():
    for v in BUDGET["summary"]["comparisons"]:
        assert _verdict_row(v) in RESULTS, _verdict_row(v)
    for g in BUDGET["summary"]["budget_gaps"]:
        for p in g["points"]:
            row = (f"| `{g['b']}` - `{g['a']}` | {g['metric']} | {p['iteration']} | {len(p['seeds'])} | "
                   f"{_iv(p['difference'])} | {p['verdict']} |")
            assert row in RESULTS, row
