"""A suite's records read over seeds: rows, paired comparisons, trends, the dense rate choice
and budget curves, each checked against scipy on the same numbers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from trainer.reproduce import Suite, load_suite, summary_tables
from trainer.verdicts import summarise


def _rec(row: str, seed: int, kid: float, method: str = "local", claims=("headline",), **kw) -> dict:
    return {"dataset": "d", "run": f"{row}-s{seed}", "row": row, "seed": seed, "method": method,
            "claims": list(claims), "kid": kid, "kid_std": 0.003, "fid": 100 * kid + 50, "precision": 0.3,
            "recall": 0.01, "density": 0.1, "coverage": 0.1, "k": 0.1, "width": 0.25, "lr": 1e-2,
            "iterations": 120, **kw}


def _suite(**kw) -> Suite:
    return Suite(name="t", description="", scale="", datasets=["d"], eval={"pr_k": 5}, **kw)


def test_comparisons_pair_by_seed_and_match_scipys_paired_t():
    rng = np.random.default_rng(3)
    rand = {s: 0.31 + rng.normal(0, 0.004) for s in range(5)}
    ep = {s: rand[s] - 0.14 + rng.normal(0, 0.02) for s in range(5)}
    glob = {s: ep[s] - 0.01 + rng.normal(0, 0.02) for s in range(3)}
    recs = ([_rec("random", s, v, "random") for s, v in rand.items()] + [_rec("ep", s, v) for s, v in ep.items()]
            + [_rec("global", s, v, "global") for s, v in glob.items()])
    suite = _suite(compare=[{"claim": "headline", "a": "random", "b": "ep", "expect": "lower"},
                            {"claim": "pruning", "a": "ep", "b": "global", "expect": "lower"},
                            {"claim": "upside-down", "a": "ep", "b": "random", "expect": "lower"}])
    out = summarise(suite, recs)
    c = {x["claim"]: x for x in out["comparisons"]}
    ci = stats.ttest_rel([ep[s] for s in range(5)], [rand[s] for s in range(5)]).confidence_interval()
    assert (c["headline"]["difference"]["lo"], c["headline"]["difference"]["hi"]) == pytest.approx((ci.low, ci.high))
    assert c["headline"]["verdict"] == "reproduced" and c["headline"]["seeds"] == [0, 1, 2, 3, 4]
    assert c["upside-down"]["verdict"] == "contradicted"
    ci = stats.ttest_rel([glob[s] for s in range(3)], [ep[s] for s in range(3)]).confidence_interval()
    assert c["pruning"]["seeds"] == [0, 1, 2]
    assert c["pruning"]["difference"]["lo"] == pytest.approx(ci.low)
    assert c["pruning"]["verdict"] == ("not settled" if ci.low < 0 < ci.high else "reproduced")
    rows = {r["row"]: r for r in out["rows"]}
    ref = stats.ttest_1samp(list(ep.values()), 0).confidence_interval()
    assert (rows["ep"]["kid"]["lo"], rows["ep"]["kid"]["hi"]) == pytest.approx((ref.low, ref.high))
    assert rows["ep"]["noise"]["seed_sd"] == pytest.approx(np.std(list(ep.values()), ddof=1))
    md = "\n".join(summary_tables(out))
    assert "**reproduced**" in md and "**contradicted**" in md and "| d | ep | local | 5 |" in md


def test_trends_are_per_seed_slopes_over_the_seeds_every_row_ran():
    ks = {"k0.05": 0.05, "k0.1": 0.1, "k0.5": 0.5, "k0.9": 0.9}
    rng = np.random.default_rng(4)
    kid = {(row, s): 0.15 + 0.06 * k + rng.normal(0, 0.005) for row, k in ks.items() for s in range(4)}
    recs = [_rec(row, s, kid[(row, s)], claims=("k_sweep",), k=k) for row, k in ks.items() for s in range(4)
            if not (row == "k0.9" and s == 3)]  # one row lacks seed 3: the trend uses seeds 0-2
    out = summarise(_suite(trends=[{"claim": "k_sweep", "rows": list(ks), "x": "k", "expect": "higher"}]), recs)
    (t,) = out["trends"]
    slopes = [stats.linregress(list(ks.values()), [kid[(row, s)] for row in ks]).slope for s in range(3)]
    ref = stats.ttest_1samp(slopes, 0).confidence_interval()
    assert t["seeds"] == [0, 1, 2] and t["slope"]["mean"] == pytest.approx(np.mean(slopes))
    assert (t["slope"]["lo"], t["slope"]["hi"]) == pytest.approx((ref.low, ref.high))
    assert t["verdict"] == "reproduced"


def test_the_dense_rate_is_chosen_on_the_train_split_and_an_edge_is_flagged():
    def dense(row, lr, s, train_kid, held_kid):
        return _rec(row, s, held_kid, "dense", claims=("dense",), lr=lr,
                    selection=[{"iteration": 120, "train": {"kid": train_kid}, "heldout": {"kid": held_kid}}])

    # held-out would pick 1e-2, the train split picks 3e-2: the choice must follow the train split
    recs = [dense("lr1e-3", 1e-3, s, 0.28, 0.28) for s in range(3)] + \
           [dense("lr1e-2", 1e-2, s, 0.12, 0.10) for s in range(3)] + \
           [dense("lr3e-2", 3e-2, s, 0.11, 0.12) for s in range(3)] + \
           [dense("lr1e-1", 1e-1, s, 0.20, 0.20) for s in range(3)]
    (c,) = summarise(_suite(), recs)["dense_choice"]
    assert c["best_row"] == "lr3e-2" and not c["at_edge"]
    (c,) = summarise(_suite(), [r for r in recs if r["row"] != "lr1e-1"])["dense_choice"]
    assert c["best_row"] == "lr3e-2" and c["at_edge"]


def test_budget_curves_average_snapshots_over_seeds():
    def run(s, kids):
        sel = [{"iteration": it, "seconds": it * 0.9 + s, "cpu_seconds": it * 1.7 + 2 * s, "train": {"kid": k, "fid": 1.0},
                "heldout": {"kid": k, "fid": 100 * k}} for it, k in kids]
        return _rec("ep-long", s, kids[-1][1], claims=("budget",), selection=sel)

    recs = [run(0, [(240, 0.2), (480, 0.15)]), run(1, [(240, 0.22), (480, 0.13)]), run(2, [(240, 0.18)]),
            *[_rec("rand", s, 0.31 + s / 100, "random", claims=("budget",)) for s in range(3)]]
    b = {x["row"]: x for x in summarise(_suite(), recs)["budget"]}
    p240, p480 = b["ep-long"]["points"]
    assert p240["seeds"] == 3 and p240["kid"]["mean"] == pytest.approx(0.2)
    ref = stats.ttest_1samp([0.15, 0.13], 0).confidence_interval()
    assert p480["seeds"] == 2 and (p480["kid"]["lo"], p480["kid"]["hi"]) == pytest.approx((ref.low, ref.high))
    assert p240["seconds"] == pytest.approx(240 * 0.9 + 1)
    assert p240["cpu_seconds"] == pytest.approx(240 * 1.7 + 2) and p480["cpu_seconds"] == pytest.approx(480 * 1.7 + 1)
    assert b["rand"]["points"] == [] and b["rand"]["level"]["kid"]["mean"] == pytest.approx(0.32)


def test_the_budget_plot_runs_along_cpu_seconds_only_where_every_snapshot_has_them(tmp_path):
    from trainer.reproduce import budget_clock, plot_suite

    def run(s, cpu=True):
        sel = [{"iteration": it, "seconds": it * 0.6, **({"cpu_seconds": it * 1.1} if cpu else {}),
                "train": {"kid": k, "fid": 1.0}, "heldout": {"kid": k, "fid": 100 * k}}
               for it, k in ((240, 0.2 + s / 100), (480, 0.15 + s / 100))]
        return _rec("ep-long", s, 0.15, claims=("budget",), selection=sel, losses=[[1, 2.0], [480, 1.0]])

    recs = [run(s) for s in range(3)]
    assert budget_clock(summarise(_suite(), recs))[0] == "cpu_seconds"
    # one record from before CPU seconds were kept: the plot falls back to wall-clock for all
    older = recs[:2] + [run(2, cpu=False)]
    key, label = budget_clock(summarise(_suite(), older))
    assert key == "seconds" and "wall-clock" in label
    plot_suite(_suite(), recs, tmp_path)
    from PIL import Image

    assert Image.open(tmp_path / "budget.png").size == (1200, 750)


def test_budget_gaps_pair_each_snapshot_by_seed_and_match_scipys_paired_t(tmp_path):
    from trainer.reproduce import plot_suite

    rng = np.random.default_rng(7)
    its = (240, 480, 960)
    dense = {(s, it): 0.2 - 0.05 * j + rng.normal(0, 0.01) for s in range(3) for j, it in enumerate(its)}
    # the ticket starts behind and ends ahead: the gap's sign changes along the budget
    ticket = {(s, it): dense[(s, it)] + (0.06, 0.0, -0.06)[j] + rng.normal(0, 0.005)
              for s in range(3) for j, it in enumerate(its)}

    def run(row, method, s, kid, reached):
        sel = [{"iteration": it, "seconds": it, "cpu_seconds": it, "train": {"kid": 0.0, "fid": 0.0},
                "heldout": {"kid": kid[(s, it)], "fid": 100 * kid[(s, it)]}} for it in reached]
        return _rec(row, s, kid[(s, reached[-1])], method, claims=("budget",), selection=sel, losses=[])

    # the ticket's seed 2 has not reached 960 yet: that point pairs seeds 0 and 1 only
    recs = [run("dense-long", "dense", s, dense, its) for s in range(3)] + \
           [run("ep-long", "global", s, ticket, its if s < 2 else its[:2]) for s in range(3)]
    suite = _suite(compare=[{"claim": "budget", "what": "ticket vs dense", "a": "dense-long", "b": "ep-long",
                             "expect": "higher"},
                            {"claim": "budget", "what": "in FID", "a": "dense-long", "b": "ep-long", "metric": "fid",
                             "expect": "higher"},
                            # a snapshot holds KID and FID only: a precision compare has no gap
                            {"claim": "budget", "a": "dense-long", "b": "ep-long", "metric": "precision",
                             "expect": "lower"}])
    out = summarise(suite, recs)
    g, g_fid = out["budget_gaps"]
    assert (g["metric"], g_fid["metric"]) == ("kid", "fid")
    assert [p["iteration"] for p in g["points"]] == list(its)
    assert [p["seeds"] for p in g["points"]] == [[0, 1, 2], [0, 1, 2], [0, 1]]
    for p in g["points"]:
        ss = p["seeds"]
        ref = stats.ttest_rel([ticket[(s, p["iteration"])] for s in ss], [dense[(s, p["iteration"])] for s in ss])
        ci = ref.confidence_interval()
        assert (p["difference"]["lo"], p["difference"]["hi"]) == pytest.approx((ci.low, ci.high))
    assert g["points"][0]["verdict"] == "reproduced" and g["points"][-1]["verdict"] == "contradicted"
    # the FID gap pairs each snapshot's FID, not its KID
    last = g_fid["points"][-1]
    ci = stats.ttest_rel([100 * ticket[(s, 960)] for s in (0, 1)],
                         [100 * dense[(s, 960)] for s in (0, 1)]).confidence_interval()
    assert (last["difference"]["lo"], last["difference"]["hi"]) == pytest.approx((ci.low, ci.high))
    md = "\n".join(summary_tables(out))
    assert "## Along the budget: d, `ep-long` - `dense-long` in KID (budget)" in md and "| 960 | 2 |" in md
    assert "## Along the budget: d, `ep-long` - `dense-long` in FID (budget)" in md
    plot_suite(suite, recs, tmp_path, out)
    from PIL import Image

    assert Image.open(tmp_path / "budget-gap.png").size == (1400, 400)  # a panel per metric


def test_a_suite_with_seeds_names_one_run_per_seed_and_pairs_from_by_seed(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("""
[defaults]
preset = "demo"
seeds = [0, 1]
[[run]]
id = "ep"
method = "local"
seeds = [0, 1, 2]
[[run]]
id = "ft"
method = "finetune"
from = "ep"
[[run]]
id = "one"
method = "random"
seeds = [7]
[[compare]]
claim = "c"
a = "one"
b = "ep"
expect = "lower"
[[trend]]
claim = "t"
rows = ["ep", "one"]
x = "k"
expect = "higher"
""")
    s = load_suite(str(p))
    assert [r.id for r in s.runs] == ["ep-s0", "ep-s1", "ep-s2", "ft-s0", "ft-s1", "one-s7"]
    assert [r.seed for r in s.runs] == [0, 1, 2, 0, 1, 7] and {r.row for r in s.runs} == {"ep", "ft", "one"}
    assert [r.source for r in s.runs if r.row == "ft"] == ["ep-s0", "ep-s1"]
    assert [r.config().seed for r in s.runs] == [0, 1, 2, 0, 1, 7]
    assert s.compare[0]["b"] == "ep" and s.trends[0]["x"] == "k"
    for bad, why in (('seeds = [1, 1]', "distinct"), ('seeds = []', "distinct")):
        p.write_text(f'[[run]]\nid = "a"\nmethod = "local"\n{bad}\n')
        with pytest.raises(ValueError, match=why):
            load_suite(str(p))
    p.write_text('[[run]]\nid = "a"\nmethod = "local"\nseeds = [0, 1]\n[[run]]\nid = "b"\nmethod = "finetune"\n'
                 'from = "a"\nseeds = [1, 5]\n')
    with pytest.raises(ValueError, match="with seed 5"):
        load_suite(str(p))
    p.write_text('[[run]]\nid = "a"\nmethod = "local"\n[[compare]]\nclaim = "c"\na = "a"\nb = "zz"\nexpect = "lower"\n')
    with pytest.raises(ValueError, match="zz"):
        load_suite(str(p))
    p.write_text('[[run]]\nid = "a"\nmethod = "local"\n[[run]]\nid = "b"\nmethod = "local"\n'
                 '[[compare]]\nclaim = "c"\na = "a"\nb = "b"\nexpect = "better"\n')
    with pytest.raises(ValueError, match="expect"):
        load_suite(str(p))
