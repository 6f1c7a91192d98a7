"""Jobs through real HTTP: the API under uvicorn, a real redis-server and a real worker process."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
from slt_stack import Stack, assert_catalog_intact, copy_images

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
