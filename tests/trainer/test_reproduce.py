"""`python -m trainer reproduce`: a suite of runs that survives kill -9 without redoing a
finished run, resumes an interrupted one from its checkpoint, and writes results and plots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from slt_stack import copy_images

from trainer.reproduce import Run, Runner, load_suite

ROOT = Path(__file__).resolve().parents[2]

TINY = """
[suite]
name = "tiny"
description = "a tiny suite for the resume test"
scale = "tiny: width 0.0625, random features"

[defaults]
preset = "demo"
features = "random"
width = 0.0625
batch_size = 2
bn_batches = 2
iterations = 3
checkpoint_every_s = 0.0
preview_every = 0
weights_lr = 1e-3

[eval]
n = 12
grid = 4

[[run]]
id = "random"
method = "random"
claims = ["headline", "k_sweep"]

[[run]]
id = "first"
method = "local"
select_every = 2
iterations = 4
claims = ["headline", "k_sweep"]

[[run]]
id = "long"
method = "global"
iterations = {long}
claims = ["k_sweep"]

[[run]]
id = "dense"
method = "dense"
claims = ["headline"]

[[run]]
id = "ft"
method = "finetune"
from = "first"
iterations = 2
claims = ["finetune"]

[[run]]
id = "pruned"
method = "prune_trained"
from = "dense"
pruning = "local"
dense_layers = ["output"]
iterations = 2
claims = ["prune_trained"]
"""


def _start(suite: Path, data: Path, out: Path, docs: Path, home: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainer", "reproduce", "--config", str(suite), "--dataset", str(data),
           "--out", str(out), "--docs", str(docs), "--device", "cpu"]
    env = {**os.environ, "SLT_HOME": str(home), "OMP_NUM_THREADS": "2"}
    with open(log, "w") as f:  # a file, not a pipe: progress bars would fill a pipe nobody reads
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"suite exited early ({proc.returncode}): {log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the suite")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three suite processes; about 3 min alone on 2 cores, far more on a busy host
def test_reproduce_resumes_after_kill_9_without_redoing_finished_runs(emoji_google_dir, tmp_path):
    data = copy_images(emoji_google_dir, tmp_path / "emoji", n=120)  # a held-out split of about 12
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY.replace("{long}", "40"))
    out, docs, home = tmp_path / "out", tmp_path / "docs", tmp_path / "home"
    runs = out / "emoji"

    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    proc = _start(suite, data, out, docs, home, log1)
    ckpt = runs / "long.ckpt"

    def mid_long() -> bool:  # the first two runs finished and "long" checkpointed past iteration 2
        if not (runs / "first.json").is_file() or not ckpt.is_file():
            return False
        try:
            return torch.load(ckpt, weights_only=True)["iteration"] >= 3
        except Exception:  # noqa: BLE001 - a checkpoint being replaced is read again
            return False

    _wait_for(mid_long, proc, timeout=400, log=log1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (runs / "long.json").exists()
    finished = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs.glob("*.json")
                if not p.name.endswith(".clock.json")}
    assert set(finished) == {"random.json", "first.json"}
    at_kill = torch.load(ckpt, weights_only=True)["iteration"]

    proc = _start(suite, data, out, docs, home, log2)
    proc.wait(timeout=400)
    err = log2.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "random: finished before, kept" in err and "first: finished before, kept" in err
    for name, (data_bytes, mtime) in finished.items():  # never redone
        assert (runs / name).read_bytes() == data_bytes and (runs / name).stat().st_mtime_ns == mtime
    long = json.loads((runs / "long.json").read_text())
    assert long["resumed_from"] >= at_kill >= 3  # from the checkpoint, not from 0
    assert [p[0] for p in long["losses"]][0] == 1 and long["losses"][-1][0] == 40
    assert not ckpt.exists()

    results = json.loads((docs / "results" / "tiny.json").read_text())
    from trainer.data import open_dataset

    held_out = len(open_dataset(data, cache_dir=tmp_path / "c").indices("heldout"))
    assert [r["run"] for r in results["runs"]] == ["random", "first", "long", "dense", "ft", "pruned"]
    keys = {"claim", "method", "objective", "init", "width", "k", "iterations", "batch_size", "dataset",
            "features", "fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "n",
            "split", "seconds", "device"}
    for r in results["runs"]:
        assert keys <= set(r), keys - set(r)
        assert r["split"] == "heldout" and r["n"] == min(12, held_out) and r["pr_k"] == 5
        assert Image.open(docs / r["grid"]).size == (134, 134)  # 2 x 2 grid of 64 px
    by = {r["run"]: r for r in results["runs"]}
    assert by["dense"]["init"] == "xavier_uniform" and by["dense"]["k"] == 1.0
    assert by["random"]["objective"] == "none" and by["first"]["objective"] == "layer-normalised"
    assert [p["iteration"] for p in by["first"]["selection"]] == [2, 4]
    assert {"train", "heldout"} <= set(by["first"]["selection"][0])
    # the search's CPU seconds beside its wall seconds: at each snapshot, growing, and the run's
    # total at least its last snapshot's; a resumed run counts the CPU seconds before the kill
    cpu = [p["cpu_seconds"] for p in by["first"]["selection"]]
    assert 0 < cpu[0] <= cpu[1] <= by["first"]["cpu_seconds"]
    assert by["long"]["cpu_seconds"] > 0 and by["random"]["cpu_seconds"] == 0.0
    assert by["pruned"]["dense_layers"] == ["output"] and by["ft"]["from"] == "first"
    table = (docs / "results" / "tiny.md").read_text()
    assert "## k_sweep" in table and "| emoji | long | global |" in table
    assert (docs / "images" / "tiny" / "k_sweep.png").is_file() and (docs / "images" / "tiny" / "loss.png").is_file()

    # a run whose settings changed since it ran is run again; the others are kept
    suite.write_text(TINY.replace("{long}", "40").replace('id = "dense"\nmethod = "dense"',
                                                          'id = "dense"\nmethod = "dense"\niterations = 2'))
    kept = (runs / "long.json").read_bytes()
    proc = _start(suite, data, out, docs, home, log2)
    proc.wait(timeout=400)
    err = log2.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "dense: its settings changed since it ran" in err and "long: finished before, kept" in err
    assert json.loads((runs / "dense.json").read_text())["iterations"] == 2
    assert "pruned: its settings changed since it ran" in err  # built on the dense run: redone too
    assert (runs / "long.json").read_bytes() == kept


def test_suite_errors_are_found_before_any_run(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[run]]\nid = "a"\nmethod = "local"\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="unknown keys.*learning_rate"):
        load_suite(str(bad))
    bad.write_text('[[run]]\nid = "ft"\nmethod = "finetune"\nfrom = "nothing"\n')
    with pytest.raises(ValueError, match="needs `from`"):
        load_suite(str(bad))
    bad.write_text('[[run]]\nid = "a"\nmethod = "local"\nk = 1.5\n')
    with pytest.raises(ValueError, match="KEPT"):
        load_suite(str(bad))
    bad.write_text('[[run]]\nid = "a"\nmethod = "local"\n[[run]]\nid = "ft"\nmethod = "finetune"\n'
                   'from = "a"\ndatasets = "all"\n')
    with pytest.raises(ValueError, match="covers datasets"):
        load_suite(str(bad))
    with pytest.raises(ValueError, match="no suite"):
        load_suite("nonesuch")


def test_shipped_suites_cover_every_claim_of_the_paper():
    claims = {"headline", "pruning", "k_sweep", "dense", "init", "width", "finetune", "prune_trained",
              "objective"}
    for name in ("quick", "full"):
        s = load_suite(name)
        runs = {r.id: r for r in s.runs}
        assert claims <= {c for r in s.runs for c in r.claims}, name
        assert {r.method for r in s.runs} == {"local", "global", "gradual", "random", "dense", "finetune",
                                              "prune_trained"}
        assert {r.config().k for r in s.runs if "k_sweep" in r.claims} >= {0.05, 0.1, 0.3, 0.5, 0.9}
        assert len({r.spec().width for r in s.runs if "width" in r.claims}) >= 3
        assert {r.spec().init for r in s.runs if "init" in r.claims} == {"signed_constant", "kaiming_normal"}
        assert {r.config().reduction for r in s.runs if "objective" in r.claims} == {"sum", "layer-mean"}
        headline = [r for r in s.runs if "headline" in r.claims]
        assert {r.method for r in headline} == {"local", "random", "dense"}
        assert all(r.datasets == "all" for r in headline) and len(s.datasets) >= 2
        # a comparison's runs share data, seeds, batch and budget
        seeds_of = {row: sorted(r.seed for r in s.runs if r.row == row) for row in {r.row for r in s.runs}}
        for claim in claims - {"dense", "prune_trained", "finetune"}:
            rs = [r for r in s.runs if claim in r.claims and r.method != "random"]
            assert len({(r.config().batch_size, r.config().iterations) for r in rs}) == 1, claim
        # every row a verdict rests on has 3 seeds or more, the headline's 5, paired with its other side
        for c in s.compare + s.trends:
            named = [c["a"], c["b"]] if "a" in c else c["rows"]
            assert all(len(seeds_of[x]) >= (5 if c["claim"] == "headline" else 3) for x in named), c
            assert len({tuple(seeds_of[x][:3]) for x in named}) == 1, c
        assert {c["claim"] for c in s.compare} >= {"headline", "pruning", "init", "objective"}
        assert {(t["claim"], t["x"]) for t in s.trends} >= {("k_sweep", "k"), ("width", "width")}
        assert runs["local-k0.1-s0"].config().pruning == "local"
    full = load_suite("full")
    assert full.runs[0].config().batch_size == 64


def test_the_budget_suite_runs_each_method_to_16x_the_quick_budget_at_3_seeds():
    quick, budget = load_suite("quick"), load_suite("budget")
    today = quick.runs[0].config().iterations
    rows: dict[str, list[Run]] = {}
    for r in budget.runs:
        rows.setdefault(r.row, []).append(r)
    by_method = {rs[0].method: rs for rs in rows.values() if rs[0].preset == "demo"}
    assert {"global", "dense", "random", "gradual"} <= set(by_method)
    for method, rs in by_method.items():
        assert sorted(r.seed for r in rs) == [0, 1, 2], method
        if method != "random":  # trained: snapshots along the way, out to 16x today's budget
            cfg = rs[0].config()
            assert cfg.iterations >= 16 * today and rs[0].select_every and cfg.iterations % rs[0].select_every == 0
            assert cfg.iterations // rs[0].select_every >= 4, method
            assert cfg.batch_size == quick.runs[0].config().batch_size
    # the paper's recipe as long, on the same plot, its mask's drift recorded
    (paper,) = [rs for rs in rows.values() if rs[0].preset == "paper"]
    cfg = paper[0].config()
    assert cfg.ama and cfg.lr == 5e-5 and cfg.reduction == "sum" and cfg.iterations >= 16 * today
    assert paper[0].drift_every and paper[0].select_every
    # the ticket against dense, and the lever against the paper's method, each a paired verdict
    assert {(c["a"], c["b"]) for c in budget.compare} == {("dense-long", "global-k0.1-long"),
                                                           ("global-k0.1-long", "gradual-k0.1-long")}


REPRO = """
[suite]
name = "repro"
[defaults]
preset = "demo"
features = "random"
width = 0.0625
batch_size = 2
bn_batches = 2
iterations = 3
checkpoint_every_s = 0.0
preview_every = 0
weights_lr = 1e-3
seeds = [0, 1]
[eval]
n = 12
grid = 4
[[run]]
id = "ep"
method = "local"
drift_every = 1
claims = ["headline"]
[[run]]
id = "dense"
method = "dense"
claims = ["headline"]
[[run]]
id = "ft"
method = "finetune"
from = "ep"
iterations = 2
seeds = [0]
claims = ["finetune"]
[[compare]]
claim = "headline"
a = "dense"
b = "ep"
expect = "lower"
"""


@pytest.mark.slow
def test_a_record_alone_runs_its_run_again(emoji_google_dir, tmp_path, monkeypatch):
    """quick.json keeps every resolved setting: a record, with no suite, preset or default,
    makes the same mask (or weights) and the same scores again."""
    from trainer.masks import decode_mask
    from trainer.search import read_weights

    monkeypatch.setenv("SLT_HOME", str(tmp_path / "home"))
    data = copy_images(emoji_google_dir, tmp_path / "emoji", n=120)
    (tmp_path / "repro.toml").write_text(REPRO)
    suite = load_suite(str(tmp_path / "repro.toml"))
    docs = tmp_path / "docs"
    Runner(suite, [str(data)], tmp_path / "out", docs, "cpu").execute()
    results = json.loads((docs / "results" / "repro.json").read_text())
    recs = {r["run"]: r for r in results["runs"]}
    assert set(recs) == {"ep-s0", "ep-s1", "dense-s0", "dense-s1", "ft-s0"}
    assert recs["ft-s0"]["from"] == "ep-s0"
    assert [recs[f"ep-s{s}"]["seed"] for s in (0, 1)] == [0, 1] and recs["ep-s1"]["search"]["seed"] == 1
    assert recs["ep-s0"]["base"]["seed"] == 0 and recs["ep-s0"]["row"] == "ep"
    assert [p[0] for p in recs["ep-s0"]["mask_drift"]] == [1, 2, 3]
    assert all(0 <= p[1] <= 1 for p in recs["ep-s0"]["mask_drift"])
    (c,) = results["summary"]["comparisons"]
    assert c["seeds"] == [0, 1] and c["verdict"] in ("reproduced", "contradicted", "not settled")
    # the seeds differ in what they make (the seed reaches the run)
    masks = {s: decode_mask((tmp_path / "out" / "emoji" / f"ep-s{s}.safetensors").read_bytes()).masks()
             for s in (0, 1)}
    assert any(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])

    for run_id in ("ep-s1", "dense-s1"):
        rec = recs[run_id]
        run = Run.from_record(rec)
        again = Runner(suite, [str(data)], tmp_path / "again", tmp_path / "docs2", "cpu").run_one(str(data), run)
        again = json.loads(json.dumps(again))  # as the results file holds it (tuples as lists)
        assert again["search"] == rec["search"] and again["base"] == rec["base"]
        for k in ("kid", "fid", "precision", "recall"):
            assert again[k] == pytest.approx(rec[k], rel=1e-6, abs=1e-9), (run_id, k)
        first, second = (root / "emoji" / f"{run_id}.safetensors" for root in (tmp_path / "out", tmp_path / "again"))
        if run_id.startswith("ep"):
            a, b = decode_mask(first.read_bytes()).masks(), decode_mask(second.read_bytes()).masks()
            assert all(torch.equal(a[n], b[n]) for n in a)
        else:
            (_, a), (_, b) = read_weights(first), read_weights(second)
            assert all(torch.equal(a[n], b[n]) for n in a)

    # a later checkout: the records committed under docs, no artifacts. Finished runs are kept;
    # a run left to do whose source's artifact is missing makes that source again first
    committed = docs / "results" / "repro" / "emoji"
    assert {p.stem for p in committed.glob("*.json")} == set(recs)
    assert "artifact" not in json.loads((committed / "ep-s0.json").read_text())
    (committed / "ft-s0.json").unlink()
    fresh = tmp_path / "fresh"
    Runner(suite, [str(data)], fresh, docs, "cpu").execute()
    made = {p.stem for p in (fresh / "emoji").glob("*.safetensors")}
    assert made == {"ep-s0", "ft-s0"}, made
    again = json.loads((docs / "results" / "repro.json").read_text())
    assert {r["run"]: r["kid"] for r in again["runs"]}["ep-s0"] == pytest.approx(recs["ep-s0"]["kid"])
    assert (again["runs_finished"], again["runs_planned"]) == (5, 5)

    # a suite part way (a run not finished in any checkout): --report writes results, tables and
    # verdicts from the finished runs, marked part way, and runs nothing
    (committed / "ft-s0.json").unlink()
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "trainer", "reproduce", "--config", str(tmp_path / "repro.toml"),
                           "--dataset", str(data), "--out", str(report), "--docs", str(docs), "--report"],
                          cwd=ROOT, env={**os.environ, "SLT_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["run"] for r in json.loads(proc.stdout)} == set(recs) - {"ft-s0"}
    assert not (committed / "ft-s0.json").exists() and not list(report.rglob("*.safetensors"))
    part = json.loads((docs / "results" / "repro.json").read_text())
    assert (part["runs_finished"], part["runs_planned"]) == (4, 5)
    assert {r["run"] for r in part["runs"]} == set(recs) - {"ft-s0"}
    assert part["summary"]["comparisons"][0]["seeds"] == [0, 1]
    assert "Part way: 4 of 5 runs finished" in (docs / "results" / "repro.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_jobs_run_a_suite_in_parallel_processes_and_a_run_waits_for_its_source(emoji_google_dir, tmp_path):
    """--jobs 2: every run finished once, in worker processes with half the cores each as torch
    threads, and a run built on another (`from`) started after that one's artifact existed."""
    import hashlib

    data = copy_images(emoji_google_dir, tmp_path / "emoji", n=120)
    suite = tmp_path / "repro.toml"
    suite.write_text(REPRO)
    out, docs = tmp_path / "out", tmp_path / "docs"
    cmd = [sys.executable, "-m", "trainer", "reproduce", "--config", str(suite), "--dataset", str(data),
           "--out", str(out), "--docs", str(docs), "--device", "cpu", "--jobs", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "SLT_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((docs / "results" / "repro.json").read_text())
    recs = {r["run"]: r for r in results["runs"]}
    assert set(recs) == {"ep-s0", "ep-s1", "dense-s0", "dense-s1", "ft-s0"}
    threads = max(1, (os.cpu_count() or 2) // 2)
    assert all(r["device"] == f"cpu ({os.uname().machine}, {threads} threads)" for r in recs.values())
    ep0 = hashlib.sha256((out / "emoji" / "ep-s0.safetensors").read_bytes()).hexdigest()
    assert recs["ft-s0"]["from_sha256"] == ep0  # built on the finished source, not a half-written one
    assert proc.stderr.count("ft-s0: KID") == 1 and proc.stderr.count("ep-s0: KID") == 1
    # and its record landed before that of the run built on it
    assert proc.stderr.index("ep-s0: KID") < proc.stderr.index("ft-s0: KID")
