"""`python -m trainer reproduce`: the paper's claims as one resumable suite of runs.

A suite is a TOML file (`trainer/suites/quick.toml`, `full.toml`, or any path): defaults shared
by every run, the evaluation protocol, and a list of runs, each tagged with the claims it serves.
Every run's artifact (mask or weights), metrics, grid and seconds are kept under --out; a
finished run (its record JSON exists) is never redone, an interrupted one resumes from its
checkpoint. Each finished run's record is also kept in the docs tree
(`<docs>/results/<suite>/<dataset>/<run>.json`, every resolved setting in it), to be committed:
a later checkout continues the suite from those records (scripts/reproduce-background.sh). The results go to `<docs>/results/<suite>.json`, tables to `<docs>/results/<suite>.md`
and plots and grids to `<docs>/images/<suite>/`.
"""
from __future__ import annotations

import json
import logging
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from trainer.atomic_write import write_atomic
from trainer.generator import BaseSpec
from trainer.search import SearchConfig, config_from, load_checkpoint, objective_of

log = logging.getLogger(__name__)

SUITES = Path(__file__).parent / "suites"
METHODS = ("local", "global", "gradual", "random", "dense", "finetune", "prune_trained")
BASE_KEYS = ("width", "init", "base_seed", "nz")
RUN_KEYS = ("id", "claims", "method", "datasets", "from", "objective", "preset", "weights_lr",
            "select_every", "seeds", "drift_every")
# named objectives a run may ask for; each sets every field that defines the loss and selection
OBJECTIVES = {
    "eq3": dict(reduction="sum", layer_norm=False, var_weight=1.0, unbiased_var=True,
                bias_score_range=1.0, global_threshold="separate"),
    "layer-normalised": dict(reduction="layer-mean", layer_norm=True, var_weight=1.0, unbiased_var=False,
                             bias_score_range=0.1, global_threshold="joint"),
    # one change at a time between the two: Eq. 3's loss with the layer-normalised bias scores
    "eq3-bias0.1": dict(reduction="sum", layer_norm=False, var_weight=1.0, unbiased_var=True,
                        bias_score_range=0.1, global_threshold="separate"),
}
RESULT_KEYS = ("fid", "kid", "kid_std", "kid_subset_size", "precision", "recall", "density", "coverage", "n",
               "split", "pr_k")
EVAL_VERSION = 2  # a record scored by an older protocol is re-scored from its kept artifact


@dataclass
class Run:
    """One run of a suite: a method, its settings and the claims it is evidence for."""

    id: str
    claims: list[str]
    method: str
    settings: dict  # SearchConfig fields and base fields, defaults merged in
    datasets: str | list[str] = "first"  # "first", "all" or names
    source: str | None = None  # the run whose artifact this one starts from (finetune, prune_trained)
    objective: str | None = None
    preset: str | None = None
    weights_lr: float | None = None  # dense and fine-tuning train weights, not scores
    select_every: int = 0  # evaluate snapshots on train and held-out every N iterations
    row: str = ""  # the suite's row this run is one seed of ("" : the run is its own row)
    drift_every: int = 0  # record the mask's distance from its start every N iterations

    def __post_init__(self) -> None:
        self.row = self.row or self.id

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed", 0))

    @classmethod
    def from_record(cls, rec: dict) -> Run:
        """The run a results record describes, from its resolved settings alone (`search`,
        `base`): no suite, preset or default is consulted, so the record is the whole recipe."""
        base = rec["base"]
        settings = {**rec["search"], "width": base["width"], "init": base["init"],
                    "base_seed": base["seed"], "nz": base["nz"]}
        return cls(id=rec["run"], claims=list(rec.get("claims", [])), method=rec["method"], settings=settings,
                   source=rec.get("from"), row=rec.get("row", rec["run"]))

    def config(self) -> SearchConfig:
        cfg_keys = {f.name for f in fields(SearchConfig)}
        kw = {k: v for k, v in self.settings.items() if k in cfg_keys}
        if self.objective:
            kw.update(OBJECTIVES[self.objective])
        if self.method in ("local", "global", "gradual", "random"):
            kw["pruning"] = self.method
        if self.method in ("dense", "finetune") and self.weights_lr is not None:
            kw["lr"] = self.weights_lr
        return config_from(self.preset, **kw)

    def spec(self) -> BaseSpec:
        s = self.settings
        return BaseSpec(nz=int(s.get("nz", 100)), width=float(s.get("width", 1.0)),
                        init=s.get("init", "signed_constant"), seed=int(s.get("base_seed", 0)))


@dataclass
class Suite:
    name: str
    description: str
    scale: str
    datasets: list[str]
    eval: dict
    runs: list[Run] = field(default_factory=list)
    paper: dict = field(default_factory=dict)  # the paper's figures per claim, for the tables
    compare: list[dict] = field(default_factory=list)  # [[compare]]: paired differences of two rows
    trends: list[dict] = field(default_factory=list)  # [[trend]]: slopes over rows along a setting


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (trainer/suites/<name>.toml) or path; every run checked before any starts."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES.glob("*.toml"))
        raise ValueError(f"no suite {name_or_path!r}: give one of {known} or a .toml path")
    raw = tomllib.loads(path.read_text())
    meta, defaults = raw.get("suite", {}), raw.get("defaults", {})
    suite = Suite(name=meta.get("name", path.stem), description=meta.get("description", ""),
                  scale=meta.get("scale", ""), datasets=list(meta.get("datasets", [])),
                  eval={"n": 10_000, "split": "heldout", "pr_k": 5, "seed": 0, "grid": 16,
                        **raw.get("eval", {})}, paper=raw.get("paper", {}))
    cfg_keys = {f.name for f in fields(SearchConfig)} | set(BASE_KEYS)
    d_unknown = set(defaults) - cfg_keys - {"preset", "weights_lr", "seeds"}
    if d_unknown:
        raise ValueError(f"{path}: [defaults]: unknown keys {sorted(d_unknown)}")
    rows: dict[str, list[Run]] = {}  # a row's runs, one per seed
    for r in raw.get("run", []):
        unknown = set(r) - cfg_keys - set(RUN_KEYS)
        if unknown:
            raise ValueError(f"{path}: run {r.get('id')!r}: unknown keys {sorted(unknown)}")
        row = r["id"]
        if row in rows:
            raise ValueError(f"{path}: run id {row!r} twice")
        seeds = r.get("seeds", defaults.get("seeds"))
        if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                                  or not all(isinstance(x, int) for x in seeds)):
            raise ValueError(f"{path}: run {row!r}: seeds must be a list of distinct integers, got {seeds!r}")
        settings = {**{k: v for k, v in defaults.items() if k in cfg_keys},
                    **{k: v for k, v in r.items() if k in cfg_keys}}
        variants = [(f"{row}-s{x}", {**settings, "seed": x}) for x in seeds] if seeds else [(row, settings)]
        rows[row] = []
        for run_id, st in variants:
            run = Run(id=run_id, claims=list(r.get("claims", [])), method=r.get("method", "local"),
                      settings=st, datasets=r.get("datasets", "first"), source=r.get("from"),
                      objective=r.get("objective"), preset=r.get("preset", defaults.get("preset")),
                      weights_lr=r.get("weights_lr", defaults.get("weights_lr")),
                      select_every=int(r.get("select_every", 0)), row=row,
                      drift_every=int(r.get("drift_every", 0)))
            if any(x.id == run_id for x in suite.runs):
                raise ValueError(f"{path}: run id {run_id!r} twice (a row's seeds are named <id>-s<seed>)")
            _check_run(path, run, rows)
            rows[row].append(run)
            suite.runs.append(run)
    suite.compare = [_check_table(path, "compare", c, rows, ("a", "b")) for c in raw.get("compare", [])]
    suite.trends = [_check_table(path, "trend", t, rows, ("rows",)) for t in raw.get("trend", [])]
    if not suite.runs:
        raise ValueError(f"{path}: no [[run]] entries")
    return suite


def _check_run(path: Path, run: Run, rows: dict[str, list[Run]]) -> None:
    """A run's method, objective and `from` are known, and its settings build, before any run."""
    if run.method not in METHODS:
        raise ValueError(f"{path}: run {run.id!r}: method {run.method!r} is not one of {METHODS}")
    if run.objective and run.objective not in OBJECTIVES:
        raise ValueError(f"{path}: run {run.id!r}: objective {run.objective!r}: one of {sorted(OBJECTIVES)}")
    if run.method in ("finetune", "prune_trained"):
        # `from` names a row; a run builds on that row's run of the same seed (or its only run)
        srcs = rows.get(run.source or "", [])
        src = next((x for x in srcs if x.seed == run.seed), srcs[0] if len(srcs) == 1 else None)
        want = ("local", "global", "gradual") if run.method == "finetune" else ("dense",)
        if src is None or src.method not in want:
            raise ValueError(f"{path}: run {run.id!r} needs `from` naming an earlier {'/'.join(want)} run"
                             + (f" with seed {run.seed}" if srcs else ""))
        run.source = src.id
        wider = {"all": 2, "first": 1}
        if wider.get(run.datasets, 0) > wider.get(src.datasets, 0) or (
                isinstance(run.datasets, list) and isinstance(src.datasets, list)
                and not set(run.datasets) <= set(src.datasets)):
            raise ValueError(f"{path}: run {run.id!r} covers datasets its `from` run "
                             f"{src.id!r} does not ({run.datasets} vs {src.datasets})")
    run.config(), run.spec()  # settings errors now, not an hour in


TREND_X = ("k", "width", "lr")


def _check_table(path: Path, kind: str, t: dict, rows: dict[str, list[Run]], row_keys: tuple[str, ...]) -> dict:
    """A [[compare]] (rows a and b) or [[trend]] (rows along x) names rows that exist, a claim and
    the paper's expected sign."""
    from trainer.seed_stats import EXPECT

    named = [t[k] for k in row_keys if k in t]
    named = [x for v in named for x in (v if isinstance(v, list) else [v])]
    missing = [x for x in named if x not in rows]
    if len(named) < (2 if kind == "trend" else len(row_keys)) or missing:
        raise ValueError(f"{path}: [[{kind}]] {t.get('claim')!r}: rows {missing or named} are not runs of the suite")
    if t.get("expect") not in EXPECT or not t.get("claim"):
        raise ValueError(f"{path}: [[{kind}]] needs a claim and expect = one of {EXPECT}, got {t!r}")
    if kind == "trend" and t.get("x") not in TREND_X:
        raise ValueError(f"{path}: [[trend]] {t['claim']!r}: x must be one of {TREND_X}, got {t.get('x')!r}")
    return dict(t)


def _datasets_of(run: Run, names: list[str]) -> list[str]:
    """The datasets a run covers: all, the first, or those it names (a path matches its last part)."""
    if run.datasets == "all":
        return names
    if run.datasets == "first":
        return names[:1]
    return [d for d in names if d in run.datasets or Path(d).name in run.datasets]


def open_named(name: str):
    """A dataset by name ($SLT_HOME/datasets/<name>) or by path."""
    from trainer.data import open_dataset
    from trainer.settings import get_settings

    p = Path(name)
    if not p.exists():
        p = get_settings().datasets_dir / name
    if not p.exists():
        raise ValueError(f"dataset {name!r}: neither a path nor an entry of {get_settings().datasets_dir}"
                         " (`make data` installs the demo datasets)")
    return open_dataset(p)


class Runner:
    """Executes a suite's runs in order, each at most once, and writes the results."""

    def __init__(self, suite: Suite, datasets: list[str], out: Path, docs: Path, device: str):
        self.suite, self.datasets, self.out, self.docs, self.device = suite, datasets, out, docs, device
        self._embedder = None
        self._open: dict[str, object] = {}

    def dataset(self, name: str):
        if name not in self._open:
            self._open[name] = open_named(name)
        return self._open[name]

    def embedder(self):
        if self._embedder is None:
            from trainer.metrics.embed import load_eval_embedder

            self._embedder = load_eval_embedder(self.suite.eval.get("features", "inception"), self.device)
        return self._embedder

    def run_dir(self, dataset: str) -> Path:
        return self.out / Path(dataset).name  # a name, or a path's last part

    def record_path(self, dataset: str, run: Run) -> Path:
        return self.run_dir(dataset) / f"{run.id}.json"

    def artifact(self, dataset: str, run_id: str) -> Path:
        return self.run_dir(dataset) / f"{run_id}.safetensors"

    def plan(self) -> list[tuple[str, Run]]:
        return [(d, r) for r in self.suite.runs for d in _datasets_of(r, self.datasets)]

    def recorded(self, ds: str, run: Run) -> dict | None:
        """A run's record: here, or committed from another checkout; None if it has none."""
        path = self.record_path(ds, run)
        return json.loads(path.read_text()) if path.is_file() else self.committed(ds, run)

    def finished(self, ds: str, run: Run) -> dict | None:
        """A run's record if it is current: made by the run as the suite now defines it and
        scored by this evaluation protocol."""
        rec = self.recorded(ds, run)
        if rec is None or not self.same_settings(ds, run, rec) or rec.get("eval_version") != EVAL_VERSION:
            return None
        return rec

    def report(self) -> list[dict]:
        """Results, tables and plots from the runs finished so far; nothing runs (a suite part
        way through, e.g. in a session's background, reported as far as it got)."""
        plan = self.plan()
        done = [(ds, run, rec) for ds, run in plan if (rec := self.finished(ds, run)) is not None]
        log.info("suite %s: %d of %d runs finished", self.suite.name, len(done), len(plan))
        records = [self._labelled(run, rec) for _, run, rec in done]
        self.write_results(records, planned=len(plan))
        return records

    def _labelled(self, run: Run, rec: dict) -> dict:
        # the claims a run serves are the suite's to say, even for a run kept from before; records
        # written before the init label existed take it too
        rec = {**rec, "claims": run.claims, "claim": run.claims[0] if run.claims else ""}
        rec["init"] = _init_label(rec["method"], rec["init"])
        return rec

    def execute(self, jobs: int = 1) -> list[dict]:
        """Every run of the plan not finished yet, `jobs` at a time; then the results."""
        plan = self.plan()
        if jobs > 1:
            self._complete_in_parallel(plan, jobs)
        else:
            from tqdm import tqdm

            for ds, run in tqdm(plan, desc=f"suite {self.suite.name}", unit="run"):
                self.complete(ds, run)
        records = [self._labelled(run, json.loads(self.record_path(ds, run).read_text())) for ds, run in plan]
        self.write_results(records, planned=len(plan))
        return records

    def complete(self, ds: str, run: Run) -> None:
        """One run of the plan to its record: kept if finished, re-scored if its artifact is here
        but its protocol old, otherwise run (or resumed from its checkpoint)."""
        rec = self.recorded(ds, run)
        if rec is not None and not self.same_settings(ds, run, rec):
            log.warning("%s/%s: its settings changed since it ran; running it again", ds, run.id)
            rec = None
        if rec is not None and rec.get("eval_version") == EVAL_VERSION:
            log.info("%s/%s: finished before, kept", ds, run.id)
            self._keep(ds, run, rec)
            return
        if rec is None and run.source and not self.artifact(ds, run.source).is_file():
            # the run it builds on finished in an earlier checkout (its record committed,
            # its artifact not): made again, as its record says (a record alone reruns it)
            log.info("%s/%s: %s's artifact is not here; making it again", ds, run.id, run.source)
            src = next(r for r in self.suite.runs if r.id == run.source)
            self._keep(ds, src, self.run_one(ds, src))
        if rec is not None and self.artifact(ds, run.id).is_file():
            log.info("%s/%s: finished before, re-scored with evaluation v%d", ds, run.id, EVAL_VERSION)
            rec = self.rescore(ds, run, rec)
        else:
            rec = self.run_one(ds, run)
        self._keep(ds, run, rec)
        log.info("%s/%s: KID %.4f FID %.1f in %.0f s", ds, run.id, rec["kid"], rec["fid"], rec["seconds"])

    def _complete_in_parallel(self, plan: list[tuple[str, Run]], jobs: int) -> None:
        """The plan in `jobs` worker processes, each with its share of the cores as torch
        threads: on a CPU, two one-thread runs get through more than one two-thread run, and a
        one-thread run's CPU seconds are not inflated when other work shares the cores (two
        threads spin at their barriers while the other waits for a core). A run built on
        another (`from`) starts once that one has finished."""
        import multiprocessing
        import os
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, (os.cpu_count() or jobs) // jobs)
        todo, running = list(plan), {}
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
            while todo or running:
                waiting = {(d, r.id) for d, r in todo} | {(d, r.id) for d, r in running.values()}
                for ds, run in list(todo):
                    if len(running) >= jobs:
                        break
                    if run.source and (ds, run.source) in waiting:
                        continue
                    todo.remove((ds, run))
                    fut = pool.submit(_complete_in_worker, self.suite, self.datasets, self.out, self.docs,
                                      self.device, ds, run.id)
                    running[fut] = (ds, run)
                if not running:  # only runs whose source is missing from the plan: a bug in the plan
                    raise ValueError(f"runs wait on runs not in the plan: {[r.id for _, r in todo]}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    running.pop(fut)
                    fut.result()  # a run's error stops the suite, as it does run by run

    # ---- one run ---------------------------------------------------------------------------

    def run_one(self, ds_name: str, run: Run) -> dict:
        from trainer.masks import decode_mask
        from trainer.search import SearchResult, finetune, random_mask, search, train_dense

        ds, cfg, spec = self.dataset(ds_name), run.config(), run.spec()
        self.run_dir(ds_name).mkdir(parents=True, exist_ok=True)
        self._warm(ds, cfg)
        ckpt = self.run_dir(ds_name) / f"{run.id}.ckpt"
        clock = self.run_dir(ds_name) / f"{run.id}.clock.json"
        state = load_checkpoint(ckpt)
        resumed_from = int(state["iteration"]) if state else 0
        # snapshots taken before a resume are kept with the clock, so a kill loses none of them
        kept = json.loads(clock.read_text()) if resumed_from and clock.is_file() else {}
        prior, prior_cpu = (_pro_rata(kept, key, resumed_from) for key in ("seconds", "cpu_seconds"))
        selection: list[dict] = [p for p in kept.get("selection", []) if p["iteration"] <= resumed_from]
        drift: list[list[float]] = [p for p in kept.get("drift", []) if p[0] <= resumed_from]
        spent_eval = spent_eval_cpu = 0.0
        # CPU seconds of this process (all its threads): for a one-thread run (--jobs), unlike
        # wall-clock, not inflated while other work shares the cores (two threads spin while
        # they wait for each other, so theirs grow too)
        cpu0 = time.process_time()

        def cpu_seconds() -> float:
            return prior_cpu + time.process_time() - cpu0 - spent_eval_cpu

        def progress(p) -> None:
            nonlocal spent_eval, spent_eval_cpu
            last = p.iteration == p.iterations
            selected = run.select_every and (p.iteration % run.select_every == 0 or last)
            if run.drift_every and p.drift is not None and (p.iteration % run.drift_every == 0 or last):
                drift.append([p.iteration, round(p.drift(), 6)])
            if selected:
                # the search's own seconds to this snapshot (earlier evaluations excluded): quality
                # against wall-clock; p.elapsed_s was taken before this evaluation starts
                seconds = round(prior + p.elapsed_s - spent_eval, 1)
                t, c = time.monotonic(), time.process_time()
                selection.append({"iteration": p.iteration, "seconds": seconds,
                                  "cpu_seconds": round(cpu_seconds(), 1),
                                  **self._select_point(p.snapshot(), ds)})
                spent_eval += time.monotonic() - t
                spent_eval_cpu += time.process_time() - c
            if selected or p.iteration % 10 == 0:
                write_atomic(clock, json.dumps({"iteration": p.iteration, "selection": selection, "drift": drift,
                                                "seconds": prior + p.elapsed_s - spent_eval,
                                                "cpu_seconds": cpu_seconds()}).encode())

        kw = dict(progress=progress, checkpoint=ckpt, resume=True)
        source = self.artifact(ds_name, run.source) if run.source else None
        if run.method == "random":
            res = SearchResult(random_mask(spec, cfg, ds.dataset_sha256, ds.name, self.device), float("nan"), 0.0)
        elif run.method in ("local", "global", "gradual", "prune_trained"):
            res = search(spec, cfg, ds, domain=ds.name, device=self.device, from_weights=source, **kw)
        elif run.method == "dense":
            res = train_dense(spec, cfg, ds, device=self.device, **kw)
        else:  # finetune
            res = finetune(decode_mask(source.read_bytes()), cfg, ds, device=self.device, **kw)
        data, seconds, losses = res.data, res.seconds, res.losses
        cpu = cpu_seconds()
        write_atomic(self.artifact(ds_name, run.id), data)
        g = self._generator(ds_name, run)
        metrics = self._evaluate(g, ds)
        grid_path = self._grid(g, ds_name, run)
        ckpt.unlink(missing_ok=True)
        clock.unlink(missing_ok=True)
        dense = list(cfg.dense_layers)
        k = float(decode_mask(source.read_bytes()).meta["k"]) if run.method == "finetune" else cfg.k
        return {
            "claim": run.claims[0] if run.claims else "", "claims": run.claims, "run": run.id,
            "row": run.row, "seed": cfg.seed, "base_seed": spec.seed,
            "method": run.method, "objective": objective_of(cfg)["name"] if run.method != "random" else "none",
            "objective_detail": objective_of(cfg),
            "init": _init_label(run.method, spec.init),
            "width": spec.width, "k": 1.0 if run.method == "dense" else k,
            "iterations": 0 if run.method == "random" else cfg.iterations, "batch_size": cfg.batch_size,
            "lr": cfg.lr, "ama": cfg.ama, "dense_layers": dense, "from": run.source,
            "dataset": ds.name, "dataset_sha256": ds.dataset_sha256,
            "features": "none" if run.method == "random" else cfg.features,
            **{k: metrics[k] for k in RESULT_KEYS}, "eval_features": metrics["features"],
            "seconds": round(prior + seconds - spent_eval, 1) if run.method != "random" else 0.0,
            "cpu_seconds": round(cpu, 1) if run.method != "random" else 0.0,
            "resumed_from": resumed_from, "device": _device_name(self.device), "eval_version": EVAL_VERSION,
            "from_sha256": _sha256(source) if source else None,
            "grid": str(grid_path.relative_to(self.docs)), "artifact": str(self.artifact(ds_name, run.id)),
            "losses": _thin(losses, 200), "selection": selection, "mask_drift": drift,
            "search": asdict(cfg), "base": asdict(spec),
        }

    def committed_path(self, dataset: str, run: Run) -> Path:
        """Where a finished run's record is kept in the docs tree, to be committed: a later
        checkout continues the suite from these (artifacts stay under --out)."""
        return self.docs / "results" / self.suite.name / Path(dataset).name / f"{run.id}.json"

    def committed(self, dataset: str, run: Run) -> dict | None:
        path = self.committed_path(dataset, run)
        return json.loads(path.read_text()) if path.is_file() else None

    def _keep(self, dataset: str, run: Run, rec: dict) -> None:
        data = json.dumps(rec, indent=1, sort_keys=True).encode()
        slim = json.loads(data)
        slim.pop("artifact", None)  # a local path
        committed = self.committed_path(dataset, run)
        committed.parent.mkdir(parents=True, exist_ok=True)
        for path, body in ((self.record_path(dataset, run), data),
                           (committed, json.dumps(slim, indent=1, sort_keys=True).encode())):
            # a kept record is left untouched (its mtime says when it finished, not when it was read)
            if not path.is_file() or path.read_bytes() != body:
                write_atomic(path, body)

    def same_settings(self, ds_name: str, run: Run, rec: dict) -> bool:
        """Whether a record was made by this run as the suite now defines it."""
        now = json.loads(json.dumps({"search": asdict(run.config()), "base": asdict(run.spec())}))
        if (rec.get("search"), rec.get("base"), rec.get("method"), rec.get("from")) != (
                now["search"], now["base"], run.method, run.source):
            return False
        src = self.artifact(ds_name, run.source) if run.source else None
        # a run built on another one is stale when that one was run again (where its artifact
        # is not here, a record committed from another checkout, there is nothing to compare)
        return src is None or not src.is_file() or rec.get("from_sha256") in (None, _sha256(src))

    def _generator(self, ds_name: str, run: Run):
        """The generator a run's kept artifact defines (a ticket, or trained weights)."""
        from trainer.masks import decode_mask
        from trainer.search import weights_generator
        from trainer.ticket import build_ticket

        path = self.artifact(ds_name, run.id)
        if run.method in ("dense", "finetune"):
            return weights_generator(path, self.device)
        base = weights_generator(self.artifact(ds_name, run.source)) if run.method == "prune_trained" else None
        return build_ticket(decode_mask(path.read_bytes()), self.device, base=base)

    def rescore(self, ds_name: str, run: Run, rec: dict) -> dict:
        """A finished run's metrics and grid again from its artifact; the search is not redone."""
        g = self._generator(ds_name, run)
        metrics = self._evaluate(g, self.dataset(ds_name))
        self._grid(g, ds_name, run)
        return {**rec, **{k: metrics[k] for k in RESULT_KEYS}, "eval_features": metrics["features"],
                "eval_version": EVAL_VERSION}

    def _warm(self, ds, cfg: SearchConfig) -> None:
        """Real moments and held-out features before the clock starts, so no run pays for them."""
        if cfg.pruning == "random":
            return
        from trainer.features import load_extractor
        from trainer.stats import real_moments

        real_moments(ds, load_extractor(cfg.features, self.device), device=self.device)

    def _evaluate(self, g, ds) -> dict:
        from trainer.evaluate import evaluate_generator

        e = self.suite.eval
        return evaluate_generator(g, ds, int(e["n"]), e["split"], int(e["seed"]), self.device,
                                  self.embedder(), pr_k=int(e["pr_k"]))

    def _select_point(self, g, ds) -> dict:
        """KID and FID of one snapshot against the train and the held-out split (same fakes)."""
        from trainer.evaluate import generated_images, real_features
        from trainer.metrics import compute_metrics, kid_subset_size

        e, emb = self.suite.eval, self.embedder()
        held = real_features(ds, "heldout", int(e["n"]), emb)
        n = len(held)  # the train side is sampled to the same size, so both FIDs share their bias
        real = {"train": real_features(ds, "train", n, emb), "heldout": held}
        fake = emb(generated_images(g, n, int(e["seed"]), self.device), batch_size=50)
        out = {}
        for s, r in real.items():
            m = compute_metrics(fake, r, kid_subset_size=kid_subset_size(n, len(r)), pr_k=int(e["pr_k"]))
            out[s] = {k: m[k] for k in ("fid", "kid", "kid_std")}
        return out

    def _grid(self, g, ds_name: str, run: Run) -> Path:
        from trainer.ticket import generate, grid

        path = self.docs / "images" / self.suite.name / f"{Path(ds_name).name}-{run.id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(self.suite.eval["grid"])
        grid(generate(g, int(self.suite.eval["seed"]), n, device=self.device)).save(path)
        return path

    # ---- results ---------------------------------------------------------------------------

    def write_results(self, records: list[dict], planned: int) -> None:
        results = self.docs / "results"
        results.mkdir(parents=True, exist_ok=True)
        from trainer.verdicts import summarise

        # every resolved setting stays (`search`, `base`: Run.from_record runs it again); only
        # the artifact's local path goes
        kept = [{k: v for k, v in r.items() if k != "artifact"} for r in records]
        summary = summarise(self.suite, records)
        doc = {"suite": self.suite.name, "description": self.suite.description, "scale": self.suite.scale,
               "datasets": self.datasets, "eval": self.suite.eval, "runs_planned": planned,
               "runs_finished": len(records), "summary": summary, "runs": kept}
        write_atomic(results / f"{self.suite.name}.json", json.dumps(doc, indent=1).encode())
        write_atomic(results / f"{self.suite.name}.md", tables(self.suite, records, summary, planned).encode())
        plot_suite(self.suite, records, self.docs / "images" / self.suite.name, summary)


def _pro_rata(clock: dict, key: str, resumed_from: int) -> float:
    """Search seconds (wall or CPU) a run's clock held before a resume, pro rata to the
    checkpoint's iteration (the clock may have been written after it)."""
    if not clock:
        return 0.0
    return float(clock.get(key, 0.0)) * min(1.0, resumed_from / max(1, clock["iteration"]))


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _complete_in_worker(suite: Suite, datasets: list[str], out: Path, docs: Path, device: str,
                        ds: str, run_id: str) -> None:
    run = next(r for r in suite.runs if r.id == run_id)
    Runner(suite, datasets, out, docs, device).complete(ds, run)


def _init_label(method: str, base_init: str) -> str:
    """What a run's weights started from: the dense model's Xavier init, the trained dense
    weights a pruned trained model selects from, or the random base's init."""
    return {"dense": "xavier_uniform", "prune_trained": "trained-dense"}.get(method, base_init)


def _sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _thin(losses: list[tuple[int, float]], n: int) -> list[list[float]]:
    step = max(1, math.ceil(len(losses) / n))
    pts = losses[::step] + (losses[-1:] if losses and (len(losses) - 1) % step else [])
    return [[int(i), (None if not math.isfinite(v) else float(v))] for i, v in pts]


def _device_name(device: str) -> str:
    import platform

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _iv(d: dict | None, digits: int = 4) -> str:
    """An Interval.as_dict as "mean [lo, hi]" (one seed: the mean and "1 seed")."""
    if not d:
        return "-"
    if d["lo"] is None:
        return f"{d['mean']:.{digits}f} (1 seed)"
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def summary_tables(summary: dict) -> list[str]:
    """Markdown for trainer.verdicts.summarise: verdicts, trends, rows over seeds, dense choice, budget."""
    lines: list[str] = []
    if summary["comparisons"]:
        lines += ["## Verdicts: paired differences over seeds", "",
                  "b - a over the seeds both rows ran, mean and 95% t-interval; a verdict other than "
                  "\"not settled\" only where the interval excludes 0.", "",
                  "| claim | what | dataset | metric | a | b | b - a [95%] | seeds | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['claim']} | {c['what']} | {c['dataset']} | {c['metric']} | {c['a']} | {c['b']} | "
                  f"{_iv(c['difference'])} | {len(c['seeds'])} | **{c['verdict']}** |" for c in summary["comparisons"]]
        lines.append("")
    if summary["trends"]:
        lines += ["## Trends: per-seed slopes", "",
                  "| claim | what | dataset | metric per unit of | rows | slope [95%] | seeds | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {t['claim']} | {t['what']} | {t['dataset']} | {t['metric']} / {t['x']} | {len(t['rows'])} | "
                  f"{_iv(t['slope'])} | {len(t['seeds'])} | **{t['verdict']}** |" for t in summary["trends"]]
        lines.append("")
    lines += ["## Rows over seeds", "",
              "Seed noise (KID's standard deviation across seeds) and evaluation noise (the root mean "
              "square of each run's KID spread over subsets of its own images) apart.", "",
              "| dataset | row | method | seeds | KID [95%] | seed sd | eval sd | FID [95%] | precision | recall |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["rows"]:
        nz = r["noise"]
        lines.append(f"| {r['dataset']} | {r['row']} | {r['method']} | {len(r['seeds'])} | {_iv(r['kid'])} | "
                     f"{_fmt(nz['seed_sd'], 4)} | {_fmt(nz['eval_sd'], 4)} | {_iv(r['fid'], 1)} | "
                     f"{_iv(r['precision'], 3)} | {_iv(r['recall'], 3)} |")
    lines.append("")
    for c in summary["dense_choice"]:
        lines += [f"## Dense learning rate, chosen on the train split: {c['dataset']}", "",
                  "| row | Adam lr | seeds | train-split KID [95%] |", "| --- | --- | --- | --- |"]
        lines += [f"| {x['row']} | {x['lr']:g} | {len(x['seeds'])} | {_iv(x['train_kid'])} |" for x in c["rates"]]
        lines += ["", f"Best: `{c['best_row']}` (Adam {c['best_lr']:g})"
                  + (" **at the edge of the grid: extend it**." if c["at_edge"] else ", inside the grid."), ""]
    for b in summary["budget"]:
        if not b["points"]:
            continue
        lines += [f"## Quality against budget: {b['dataset']}/{b['row']} ({b['method']})", "",
                  "| iteration | search s (wall) | search s (CPU) | seeds | KID held-out [95%] | FID held-out [95%] |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {p['iteration']} | {p['seconds']:.0f} | {_fmt(p.get('cpu_seconds'), 0)} | {p['seeds']} | "
                  f"{_iv(p['kid'])} | {_iv(p['fid'], 1)} |" for p in b["points"]]
        lines.append("")
    for g in summary.get("budget_gaps", []):
        lines += [f"## Along the budget: {g['dataset']}, `{g['b']}` - `{g['a']}` in {g['metric'].upper()} "
                  f"({g['claim']})", "",
                  f"{g['what']}: the paired held-out {g['metric'].upper()} difference at each snapshot, over "
                  f"the seeds both reached it with (expected {g['expect']}).", "",
                  "| iteration | seeds | b - a [95%] | verdict |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['iteration']} | {len(p['seeds'])} | {_iv(p['difference'])} | {p['verdict']} |"
                  for p in g["points"]]
        lines.append("")
    return lines


def tables(suite: Suite, records: list[dict], summary: dict | None = None, planned: int | None = None) -> str:
    """The verdicts over seeds, then one markdown table per claim (a run appears under every
    claim it serves)."""
    claims: list[str] = []
    for r in records:
        claims += [c for c in r["claims"] if c not in claims]
    lines = [f"# Suite `{suite.name}`", "", suite.description, "", f"Scale: {suite.scale}", ""]
    if planned is not None and len(records) < planned:
        lines += [f"**Part way: {len(records)} of {planned} runs finished.** Rows, verdicts and curves "
                  "below use the finished runs only (`python -m trainer reproduce --config "
                  f"{suite.name}` goes on from them).", ""]
    lines += [
             f"Evaluation: {suite.eval['split']} split, n vs n (n below), standard FID Inception, "
             f"precision/recall with k={suite.eval['pr_k']}, density/coverage with k=5, KID ± its "
             "standard deviation over subsets.", ""]
    if summary is None:
        from trainer.verdicts import summarise

        summary = summarise(suite, records)
    lines += summary_tables(summary)
    head = ("| dataset | run | method | objective | init | width | k | seed | it. | KID | FID | P | R | D | C | n | s |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in claims:
        lines += [f"## {c}", ""]
        if c in suite.paper:
            lines += [f"Paper: {suite.paper[c]}", ""]
        lines.append(head)
        for r in records:
            if c in r["claims"]:
                lines.append(
                    f"| {r['dataset']} | {r['run']} | {r['method']} | {r['objective']} | {r['init']} | "
                    f"{r['width']:g} | {r['k']:g} | {r.get('seed', '-')} | {r['iterations']} | "
                    f"{r['kid']:.4f} ± {r['kid_std']:.4f} | "
                    f"{r['fid']:.1f} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['density'])} | "
                    f"{_fmt(r['coverage'])} | {r['n']} | {r['seconds']:.0f} |")
        lines.append("")
    sel = [r for r in records if r.get("selection")]
    for r in sel:
        lines += [f"## checkpoint selection: {r['dataset']}/{r['run']}", "",
                  "| iteration | KID train | FID train | KID held-out | FID held-out |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {p['iteration']} | {p['train']['kid']:.4f} | {p['train']['fid']:.1f} | "
                  f"{p['heldout']['kid']:.4f} | {p['heldout']['fid']:.1f} |" for p in r["selection"]]
        lines.append("")
    return "\n".join(lines)


def _err(iv: dict) -> tuple[float, float]:
    """Matplotlib's (below, above) error bar lengths of an interval (0 for one seed)."""
    return (0.0, 0.0) if iv["lo"] is None else (iv["mean"] - iv["lo"], iv["hi"] - iv["mean"])


def _bars(ax, xs: list[float], ivs: list[dict], **kw) -> None:
    err = np.array([_err(iv) for iv in ivs]).T
    ax.errorbar(xs, [iv["mean"] for iv in ivs], yerr=err, capsize=3, **kw)


def budget_clock(summary: dict) -> tuple[str, str]:
    """The seconds the budget plot runs along, and its axis label: the search's CPU seconds where
    every snapshot has them (wall-clock counts the time other work held the cores), else its
    wall-clock seconds (records made before CPU seconds were kept)."""
    pts = [p for b in summary["budget"] for p in b["points"]]
    if pts and all(math.isfinite(p.get("cpu_seconds", math.nan)) for p in pts):
        return "cpu_seconds", "search CPU seconds (all its threads; evaluation excluded)"
    return "seconds", "search seconds (wall-clock; evaluation excluded)"


def plot_suite(suite: Suite, records: list[dict], out: Path, summary: dict | None = None) -> None:
    """KID, FID and precision/recall against k and width (means over seeds, 95% intervals),
    quality against budget, the mask's drift from its start, and the loss curves, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.verdicts import by_row, summarise

    summary = summary or summarise(suite, records)
    first = {key: next(iter(seeds.values())) for key, seeds in by_row(records).items()}
    out.mkdir(parents=True, exist_ok=True)
    for claim, key, xlabel in (("k_sweep", "k", "k (fraction of weights kept)"), ("width", "width", "width multiplier")):
        rows = [r for r in summary["rows"] if claim in r["claims"] and r["method"] != "dense"]
        if not any(r["method"] != "random" for r in rows):
            continue
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
        for ds in dict.fromkeys(r["dataset"] for r in rows):
            for kind, style in (("edge-popup", dict(marker="o")), ("random pruning", dict(marker="x", ls=":"))):
                rr = sorted((r for r in rows if r["dataset"] == ds and (r["method"] == "random") == (kind != "edge-popup")),
                            key=lambda r: first[(ds, r["row"])][key])
                if not rr:
                    continue
                x = [first[(ds, r["row"])][key] for r in rr]
                _bars(ax[0], x, [r["kid"] for r in rr], label=f"{ds} {kind}", **style)
                _bars(ax[1], x, [r["fid"] for r in rr], label=f"{ds} {kind}", **style)
                if kind == "edge-popup":
                    _bars(ax[2], x, [r["precision"] for r in rr], marker="o", label=f"{ds} precision")
                    _bars(ax[2], x, [r["recall"] for r in rr], marker="s", ls="--", label=f"{ds} recall")
        ax[0].legend(fontsize=7)
        ax[0].set(xlabel=xlabel, ylabel="KID (held-out)", title=f"KID vs {key}, mean and 95% over seeds")
        ax[1].set(xlabel=xlabel, ylabel="FID (held-out)", title=f"FID vs {key}")
        ax[2].set(xlabel=xlabel, ylabel=f"k={suite.eval['pr_k']} NN", title="precision / recall")
        ax[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{claim}.png", dpi=100)
        plt.close(fig)
    if any(b["points"] for b in summary["budget"]):
        fig, ax = plt.subplots(2, 2, figsize=(12, 7.5))
        clock, clock_label = budget_clock(summary)
        for i, b in enumerate(summary["budget"]):
            label, color = f"{b['dataset']}/{b['row']}", f"C{i % 10}"
            for j, m in enumerate(("kid", "fid")):
                if not b["points"]:  # random pruning: one level, drawn across the plot
                    for a in ax[j]:
                        a.axhline(b["level"][m]["mean"], color=color, ls=":", label=label)
                    continue
                pts = b["points"]
                _bars(ax[j][0], [p["iteration"] for p in pts], [p[m] for p in pts], marker="o", color=color,
                      label=label)
                _bars(ax[j][1], [p[clock] for p in pts], [p[m] for p in pts], marker="o", color=color,
                      label=label)
        for j, m in enumerate(("KID", "FID")):
            ax[j][0].set(xlabel="iteration", ylabel=f"{m} (held-out)", xscale="log")
            ax[j][1].set(xlabel=clock_label, ylabel=f"{m} (held-out)", xscale="log")
        ax[0][0].legend(fontsize=7)
        ax[0][0].set_title("quality against budget: mean and 95% over seeds")
        fig.tight_layout()
        fig.savefig(out / "budget.png", dpi=100)
        plt.close(fig)
    if summary.get("budget_gaps"):
        metrics = list(dict.fromkeys(g["metric"] for g in summary["budget_gaps"]))  # one panel each: KID, FID
        fig, axes = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            for i, g in enumerate(x for x in summary["budget_gaps"] if x["metric"] == m):
                pts = g["points"]
                _bars(ax, [p["iteration"] for p in pts], [p["difference"] for p in pts], marker="o",
                      color=f"C{i % 10}", label=f"{g['dataset']}: {g['b']} - {g['a']}")
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set(xlabel="iteration", ylabel=f"{m.upper()} difference b - a (held-out)", xscale="log",
                   title=f"paired {m.upper()} gap along the budget: mean and 95% over seeds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "budget-gap.png", dpi=100)
        plt.close(fig)
    drifts = [r for r in records if r.get("mask_drift")]
    if drifts:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, r in enumerate(drifts):
            d = np.array(r["mask_drift"], dtype=float)
            ax.plot(d[:, 0], d[:, 1], marker=".", color=f"C{i % 10}", label=f"{r['dataset']}/{r['run']}")
        ax.set(xlabel="iteration", ylabel="fraction of mask entries flipped since iteration 0",
               title="how far a search moves its mask")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "drift.png", dpi=100)
        plt.close(fig)
    curves = [r for r in records if r["losses"]]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, r in enumerate(curves):
            pts = np.array([p for p in r["losses"] if p[1] is not None], dtype=float)
            if len(pts) and pts[0, 1] > 0:
                ax.plot(pts[:, 0], pts[:, 1] / pts[0, 1], lw=0.9, color=f"C{i % 10}",
                        ls=("-", "--", "-.")[i // 10 % 3], label=f"{r['dataset']}/{r['run']}")
        ax.set(xlabel="iteration", ylabel="loss / initial loss", yscale="log", title="moment-matching loss")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)


def run_suite(config: str, datasets: list[str] | None, out: Path | None, docs: Path, device: str,
              report_only: bool = False, jobs: int = 1) -> list[dict]:
    """Load a suite and run what is not finished yet (with report_only, nothing: results from the
    runs finished so far); returns the records reported."""
    from trainer.settings import get_settings

    suite = load_suite(config)
    names = datasets or suite.datasets
    if not names:
        raise ValueError("no datasets: give --dataset NAME or list them in the suite")
    out = out or get_settings().home / "reproduce" / suite.name
    runner = Runner(suite, names, Path(out), Path(docs), device)
    return runner.report() if report_only else runner.execute(jobs)

