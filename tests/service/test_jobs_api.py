"""Jobs through real HTTP: the API under uvicorn, a real redis-server and a real worker process."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slt_stack import ROOT, TOKEN, Stack, assert_catalog_intact, copy_images

from store.domains import DomainRegistry
from trainer.data import open_dataset
from trainer.generator import BaseSpec, base_sha256, build_base
from trainer.masks import decode_mask
from trainer.metrics.inception import SAFETENSORS_NAME, load_inception_state
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow

EVAL_N = 16  # images per side when the worker evaluates a finished mask
METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")


def fid_inception_weights() -> Path:
    """The FID Inception weights in the persistent test cache (fetched once per machine, as the
    trainer's evaluation tests do), so the worker evaluates with the real protocol offline."""
    cache = Path(os.environ.get("SLT_TEST_CACHE") or Path.home() / ".cache" / "slt-tests").expanduser()
    settings = TrainerSettings(home=cache / "slt-home")
    load_inception_state(settings)
    return settings.cache_dir / "weights" / SAFETENSORS_NAME


@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    home = tmp_path_factory.mktemp("jobs-api") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "tiny")
    # 96 images: enough in the held-out split (13) for every metric of an evaluation
    copy_images(emoji_google_dir, home / "datasets" / "evaluable", n=96)
    bad = home / "datasets" / "broken"
    bad.mkdir()
    for i in range(3):  # image names, but not images
        (bad / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    st = Stack(home, SLT_EVAL_N=str(EVAL_N), SLT_INCEPTION_WEIGHTS=str(fid_inception_weights()))
    try:
        st.start_api()
        st.start_worker()
        yield st
    finally:
        st.close()


def test_search_job_progresses_succeeds_promotes_and_is_evaluated(stack: Stack, tmp_path: Path):
    job_id = stack.submit("evaluable", domain="tiny-domain", iterations=24)
    seen: list[dict] = []
    job = stack.wait_job(job_id, seen=seen)
    assert job["status"] == "succeeded", job
    statuses = [j["status"] for j in seen]
    assert statuses[0] in ("queued", "running") and "running" in statuses
    progress = [j["progress"] for j in seen if j["status"] == "running"]
    assert progress == sorted(progress) and len({p for p in progress if 0 < p < 1}) >= 2, progress
    assert job["progress"] == 1.0 and job["iteration"] == job["iterations"] == 24
    assert job["attempts"] == 1 and job["resumed_from"] is None and job["error"] is None
    assert job["started"] >= job["created"] and job["finished"] >= job["started"]
    assert [p[0] for p in job["losses"]] == sorted(p[0] for p in job["losses"]) and job["losses"][-1][0] == 24
    assert job["config"]["features"] == "random" and job["config"]["iterations"] == 24

    # the mask: in the catalog, on the served base, promoted with its history
    assert job["mask_id"] in assert_catalog_intact(stack.home)
    mask = decode_mask((stack.home / "masks" / f"{job['mask_id']}.safetensors").read_bytes())
    assert mask.base_sha256 == base_sha256(build_base(BaseSpec(width=0.0625)))
    assert mask.meta["domain"] == "tiny-domain"
    domains = DomainRegistry(stack.store.r)
    assert domains.active("tiny-domain") == job["mask_id"]
    assert domains.get("tiny-domain")["history"][0]["by"] == f"job:{job_id}"
    assert not (stack.home / "jobs" / job_id).exists()  # checkpoint removed once done

    with stack.client(admin=False) as c:
        listed = c.get("/jobs").json()
        assert job_id in [j["job_id"] for j in listed]
        assert [j["job_id"] for j in c.get("/jobs", params={"status": "succeeded"}).json()] == [job_id]
        # a search previews its last iteration
        assert job["preview"] == f"/jobs/{job_id}/preview"
        r = c.get(job["preview"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n")

    # then the worker evaluates the mask (SLT_EVAL_N images, held-out split, FID Inception),
    # and GET /masks/{id} shows the metrics keyed by split, as `trainer evaluate --record` does
    info = stack.wait_evaluation(job["mask_id"])
    assert list(info["evaluation"]) == ["heldout"], info["evaluation"]
    ev = info["evaluation"]["heldout"]
    for name in METRICS:
        assert isinstance(ev[name], float) and math.isfinite(ev[name]), (name, ev)
    assert ev["fid"] >= 0 and 0 <= ev["precision"] <= 1 and 0 <= ev["coverage"] <= 1
    heldout = open_dataset(stack.home / "datasets" / "evaluable", cache_dir=tmp_path).indices("heldout")
    assert ev["n"] == min(EVAL_N, len(heldout)) >= 6, (ev["n"], len(heldout))
    assert ev["split"] == "heldout" and ev["features"] == "inception-fid" and ev["comparable"] is True
    assert ev["mask_id"] == job["mask_id"] and ev["dataset"] == "evaluable"
    sidecar = json.loads((stack.home / "masks" / f"{job['mask_id']}.metrics.json").read_text())
    assert list(sidecar) == ["heldout"] and sidecar["heldout"]["n"] == ev["n"]
    with stack.client(admin=False) as c:
        listed = {m["mask_id"]: m for m in c.get("/masks").json()}
    assert listed[job["mask_id"]]["evaluation"] == info["evaluation"]


def test_cancel_queued_and_running_jobs_and_a_dataset_gone_before_its_turn(stack: Stack):
    before = set(assert_catalog_intact(stack.home))
    running = stack.submit("tiny", iterations=5000)
    stack.wait_job(running, lambda j: j["status"] == "running" and j["iteration"] >= 2)
    queued = stack.submit("tiny", iterations=5)
    doomed_dir = shutil.copytree(stack.home / "datasets" / "tiny", stack.home / "datasets" / "doomed")
    doomed = stack.submit("doomed", iterations=5)
    shutil.rmtree(doomed_dir)  # gone before a worker gets to it

    with stack.client() as c:
        r = c.delete(f"/jobs/{queued}")
        assert r.status_code == 202 and r.json()["status"] == "cancelled"  # at once: it never ran
        r = c.delete(f"/jobs/{running}")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = stack.wait_job(running)
    assert job["status"] == "cancelled" and job["mask_id"] is None
    assert 2 <= job["iteration"] < 5000
    assert stack.job(queued)["attempts"] == 0

    failed = stack.wait_job(doomed)
    assert failed["status"] == "failed" and "dataset 'doomed' not found" in failed["error"]
    with stack.client() as c:
        assert c.delete(f"/jobs/{running}").status_code == 409
        assert c.delete(f"/jobs/{doomed}").status_code == 409
    assert set(assert_catalog_intact(stack.home)) == before
    assert not (stack.home / "jobs" / running).exists()


def test_cancel_during_the_real_statistics_pass(stack: Stack, emoji_google_dir: Path):
    (stack.home / "datasets" / "emoji-all").symlink_to(emoji_google_dir)  # ~3,800 images: minutes
    job_id = stack.submit("emoji-all", iterations=5)
    stack.wait_job(job_id, lambda j: j["status"] == "running")
    time.sleep(2)
    with stack.client() as c:
        assert c.delete(f"/jobs/{job_id}").status_code == 202
    t0 = time.monotonic()
    job = stack.wait_job(job_id, timeout=60)
    assert job["status"] == "cancelled" and job["iteration"] == 0
    assert time.monotonic() - t0 < 30  # stopped between batches, not after the whole pass


def test_dataset_that_fails_to_load_fails_the_job_clearly(stack: Stack):
    job = stack.wait_job(stack.submit("broken", iterations=5))
    assert job["status"] == "failed" and job["mask_id"] is None
    assert "no readable images" in job["error"] and "broken" in job["error"]
    assert str(stack.home) not in job["error"]  # no server paths in public records


@pytest.mark.parametrize("dataset", ["../tiny", "/etc", "a/b", "..", "a\\b", ".hidden", "", "x" * 65])
def test_dataset_must_be_a_name(stack: Stack, dataset: str):
    with stack.client() as c:
        r = c.post("/masks", json={"domain": "d", "dataset": dataset})
    assert r.status_code == 422 and "dataset" in r.json()["detail"]


@pytest.mark.parametrize("config", [
    {"k": 0}, {"k": 1.5}, {"iterations": 0}, {"iterations": 2_000_001}, {"batch_size": 1},
    {"batch_size": 257}, {"lr": 0}, {"lr": 2}, {"seed": -1}, {"seed": 2**31}, {"pruning": "random"},
    {"features": "random"}, {"iterations": 10.5}, {"checkpoint_every_s": 1},
])
def test_config_is_bounded(stack: Stack, config: dict):
    with stack.client() as c:
        r = c.post("/masks", json={"domain": "d", "dataset": "tiny", "config": config})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("body.config")


def test_submit_errors(stack: Stack):
    body = {"domain": "d", "dataset": "tiny"}
    with stack.client(admin=False) as anon, stack.client() as c:
        assert anon.post("/masks", json=body).status_code == 401
        r = anon.post("/masks", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post("/masks", json={"domain": "d", "dataset": "nope"})
        assert r.status_code == 404 and "GET /datasets" in r.json()["detail"]
        assert c.post("/masks", json={"domain": "Bad Name", "dataset": "tiny"}).status_code == 422
        assert c.post("/masks", json={**body, "preset": "huge"}).status_code == 422
        assert c.get("/jobs/" + "0" * 32).status_code == 404
        assert c.get("/jobs/not-a-job").status_code == 422
        assert c.delete("/jobs/" + "0" * 32).status_code == 404
        assert anon.delete("/jobs/" + "0" * 32).status_code == 401
        assert c.get("/jobs", params={"status": "sleeping"}).status_code == 422


# ---- the `slt` client against this stack (issue 24): real processes, real HTTP ------------------

def _slt(url: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    """`python -m slt ARGS` as a user runs it, configured by SLT_URL / SLT_ADMIN_TOKEN."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLT_")}
    env.update({"SLT_URL": url, **({"SLT_ADMIN_TOKEN": token} if token else {})})
    return subprocess.run([sys.executable, "-m", "slt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _refused(r: subprocess.CompletedProcess, rc: int, detail: str) -> None:
    """A clear failure: the exit status, the API's (or the check's) message, no traceback."""
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert detail in r.stderr and "Traceback" not in r.stderr, r.stderr


def _evaluated_mask(stack: Stack) -> dict:
    """A mask this stack's worker searched and evaluated (the first test's, else a new one)."""
    with stack.client(admin=False) as c:
        for m in c.get("/masks").json():
            if m.get("evaluation") and m.get("provenance"):
                return m
    job = stack.wait_job(stack.submit("evaluable", domain="cli-eval", iterations=8))
    assert job["status"] == "succeeded", job
    return stack.wait_evaluation(job["mask_id"])


def test_slt_promote_generate_upload_search_and_clear_errors(stack: Stack, tmp_path: Path,
                                                             emoji_google_dir: Path):
    mask = _evaluated_mask(stack)
    r = _slt(stack.url, "promote", "cli-domain", mask["mask_id"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mask_id"] == mask["mask_id"]

    # exactly the bytes the API returns, in each format
    for fmt in ("png", "webp", "json"):
        out = tmp_path / f"grid.{fmt}"
        r = _slt(stack.url, "generate", "--domain", "cli-domain", "--n", "4", "--seed", "7",
                 "--format", fmt, "--out", str(out))
        assert r.returncode == 0, r.stderr
        with stack.client(admin=False) as c:
            api = c.get("/generate", params={"domain": "cli-domain", "n": 4, "seed": 7, "format": fmt})
        assert out.read_bytes() == api.content and len(api.content) > 100

    # a dataset from an archive, then a search on it
    images = copy_images(emoji_google_dir, tmp_path / "images", n=12)
    archive = shutil.make_archive(str(tmp_path / "cli-set"), "zip", images)
    r = _slt(stack.url, "upload", "cli-set", archive)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12
    r = _slt(stack.url, "search", "--domain", "cli-set", "--dataset", "cli-set", "--preset", "demo",
             "--iterations", "4", "--batch-size", "2", "--no-promote")
    assert r.returncode == 0, r.stderr
    job = stack.wait_job(json.loads(r.stdout)["job_id"])
    assert job["status"] == "succeeded" and job["config"]["iterations"] == 4 and job["promote"] is False

    # errors: the API's detail, a non-zero exit, no traceback
    _refused(_slt(stack.url, "generate", "--domain", "nowhere", "--out", str(tmp_path / "x.png")),
             1, "nowhere")
    assert not (tmp_path / "x.png").exists()
    _refused(_slt(stack.url, "promote", "cli-domain", mask["mask_id"], token="wrong"), 1, "401")
    _refused(_slt(stack.url, "search", "--domain", "d", "--dataset", "nope"), 1, "GET /datasets")
    _refused(_slt(stack.url, "upload", "cli-set", archive), 1, "already exists")
    _refused(_slt("http://127.0.0.1:9", "generate", "--domain", "d", "--out", "-"), 1, "cannot reach")


def test_slt_follow_prints_progress_until_the_end_event(stack: Stack):
    r = _slt(stack.url, "search", "--domain", "cli-follow", "--dataset", "tiny", "--preset", "demo",
             "--iterations", "12", "--batch-size", "2", "--follow")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    progress = [int(ln.split()[1].split("/")[0]) for ln in lines if ln.startswith("iteration ")]
    assert progress and progress == sorted(progress) and progress[-1] == 12, r.stdout
    assert lines[-1].startswith("succeeded: mask "), r.stdout
    job_id = json.loads(r.stdout[:r.stdout.index("}") + 1])["job_id"]
    assert lines[-1] == f"succeeded: mask {stack.job(job_id)['mask_id']}"
    r = _slt(stack.url, "follow", job_id)  # an ended job: its end at once, the same status
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == lines[-1], (r.stdout, r.stderr)


def test_slt_export_writes_a_model_card_and_import_refuses_a_mismatch_then_imports_elsewhere(
        stack: Stack, tmp_path: Path):
    mask = _evaluated_mask(stack)
    mask_id, bundle = mask["mask_id"], tmp_path / "bundle"
    r = _slt(stack.url, "export", mask_id, "--out", str(bundle))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in bundle.iterdir()) == sorted([f"{mask_id}.safetensors", "README.md"])
    data = (bundle / f"{mask_id}.safetensors").read_bytes()
    with stack.client(admin=False) as c:
        assert data == c.get(f"/masks/{mask_id}/file").content
    card = (bundle / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    ev = mask["evaluation"]["heldout"]
    prov = mask["provenance"]
    assert front["license"] == "unknown" and "strong-lottery-ticket" in front["tags"]
    assert front["datasets"] == [prov["dataset"]] == [ev["dataset"]]
    assert set(front["metrics"]) == set(METRICS)
    results = front["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "heldout"
    assert {m["type"]: m["value"] for m in results["metrics"]} == {m: ev[m] for m in METRICS}
    slt = front["slt"]
    assert slt["mask_id"] == slt["sha256"] == hashlib.sha256(data).hexdigest() == mask_id
    assert slt["base"] == {"arch": mask["base_arch"]["arch"], "nz": mask["base_arch"]["nz"],
                           "width": 0.0625, "init": mask["init"], "seed": mask["base_seed"],
                           "sha256": base_sha256(build_base(BaseSpec(width=0.0625)))}
    assert slt["dataset"] == {"name": prov["dataset"], "sha256": mask["dataset_sha256"]}
    # the body: the exact request, the job's settings, search time and device, metrics with n
    body = card.split("---\n", 2)[2]
    assert f"job: `{prov['job_id']}`" in body and "on cpu" in body
    assert f"search time: {prov['search_seconds']} s" in body and prov["search_seconds"] > 0
    request = json.loads(body.split("```json\n")[1].split("```")[0])
    assert request == {"domain": prov["domain"], "dataset": prov["dataset"], "preset": prov["preset"],
                       "promote": prov["promote"],
                       "config": {k: prov["config"][k] for k in ("k", "iterations", "batch_size",
                                                                 "pruning", "seed", "lr")}}
    assert f"slt search --domain {prov['domain']} --dataset {prov['dataset']}" in body
    assert f"| heldout | {ev['n']} | {ev['fid']} |" in body and "not recorded" not in body

    other = Stack(tmp_path / "other")  # another deployment: its own Redis and API
    try:
        other.start_api()
        # a card that does not fit the file is refused before anything is sent
        for name, tamper in [("file", lambda d: (d / f"{mask_id}.safetensors").write_bytes(data[:-1] + b"\0")),
                             ("base", lambda d: (d / "README.md").write_text(
                                 card.replace(slt["base"]["sha256"], "0" * 64)))]:
            bad = Path(shutil.copytree(bundle, tmp_path / f"bad-{name}"))
            tamper(bad)
            r = _slt(other.url, "import", str(bad))
            _refused(r, 3, "does not match its card")
            assert ("its sha256 is" if name == "file" else "base sha256") in r.stderr
        _refused(_slt(other.url, "import", str(tmp_path)), 3, "not a bundle")
        with other.client(admin=False) as c:
            assert c.get(f"/masks/{mask_id}").status_code == 404

        r = _slt(other.url, "import", str(bundle))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["mask_id"] == mask_id
        with other.client(admin=False) as c:
            assert c.get(f"/masks/{mask_id}/file").content == data
            assert c.get(f"/masks/{mask_id}").json()["served"] is True
        assert _slt(other.url, "import", str(bundle)).returncode == 0  # again: already there
    finally:
        other.close()
