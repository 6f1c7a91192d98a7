"""Many hosts, no shared disk: two API replicas and two workers, each with its own SLT_HOME,
one Redis between them. A dataset uploaded through replica A is searched by the worker of
host B; that worker is killed mid-search and the worker of host A resumes from the
checkpoint B published; the mask shows, with its evaluation, on both replicas, which serve
the same bytes."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from slt_stack import TOKEN, Stack

from trainer.data import open_dataset

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def _fid_weights() -> Path:
    from trainer.metrics.inception import SAFETENSORS_NAME, load_inception_state
    from trainer.settings import TrainerSettings

    cache = Path(os.environ.get("SLT_TEST_CACHE") or Path.home() / ".cache" / "slt-tests").expanduser()
    settings = TrainerSettings(home=cache / "slt-home")
    load_inception_state(settings)
    return settings.cache_dir / "weights" / SAFETENSORS_NAME


def _archive(src: Path, n: int) -> bytes:
    files = sorted(src.glob("*.png"))[::20][:n]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in files:
            zf.write(f, f"imgs/{f.name}")
    return buf.getvalue()


def test_two_replicas_two_workers_no_shared_disk(tmp_path, emoji_google_dir):
    home_a, home_b = tmp_path / "host-a", tmp_path / "host-b"
    st = Stack(home_a, SLT_EVAL_N="16", SLT_INCEPTION_WEIGHTS=str(_fid_weights()),
               SLT_CHECKPOINT_PUBLISH_S="0")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        url_a = st.start_api()
        url_b = st.start_api(home=home_b, name="api-b")
        with httpx.Client(base_url=url_a, headers=auth, timeout=60) as a:
            r = a.post("/datasets", data={"name": "uploaded"},
                       files={"file": ("u.zip", _archive(emoji_google_dir, 96), "application/zip")})
            assert r.status_code == 201, r.text
        with httpx.Client(base_url=url_b, timeout=30) as b:  # listed on the other replica too
            listed = {d["name"]: d for d in b.get("/datasets").json()}
            assert listed["uploaded"]["images"] == 96, listed
        assert not (home_b / "datasets" / "uploaded").exists()

        worker_b = st.start_worker(home=home_b)  # the only worker: host B takes the job
        job_id = st.submit("uploaded", domain="shared", iterations=60)
        deadline = time.monotonic() + 240
        while (st.store.get(job_id).get("checkpoint_iteration") or 0) < 3:
            assert time.monotonic() < deadline, st.log("worker-1")[-4000:]
            time.sleep(0.2)
        assert st.store.get(job_id)["worker"].endswith(f":{worker_b.pid}")
        fetched = list((home_b / "cache" / "shared-datasets").iterdir())
        assert len(fetched) == 1  # B fetched the dataset from the shared store, verified
        assert open_dataset(fetched[0]).dataset_sha256 == \
            open_dataset(home_a / "datasets" / "uploaded").dataset_sha256
        os.kill(worker_b.pid, signal.SIGKILL)
        worker_b.wait()
        killed_at = time.monotonic()
        published = st.store.get(job_id)["checkpoint_iteration"]

        # host A has no checkpoint of its own: checked before its worker starts, since that
        # worker may take the job over (and fetch the published one) before it reports ready
        assert not (home_a / "jobs" / job_id).exists()
        st.start_worker(home=home_a)
        st.wait_job(job_id, lambda j: j["status"] == "running" and (j["resumed_from"] or 0) > 0,
                    timeout=240)
        log.info("job taken over %.1f s after its worker was killed", time.monotonic() - killed_at)
        job = st.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", job
        assert job["resumed_from"] >= published > 0, (job, published)
        mask_id = job["mask_id"]
        assert "fetched" in st.log("worker-2") and "published checkpoint" in st.log("worker-2")

        st.wait_evaluation(mask_id)
        seen = []
        for url in (url_a, url_b):
            with httpx.Client(base_url=url, timeout=60) as c:
                assert mask_id in [m["mask_id"] for m in c.get("/masks").json()]
                info = c.get(f"/masks/{mask_id}").json()
                assert info["evaluation"]["heldout"]["n"] > 0, info
                r = c.get("/generate", params={"domain": "shared", "seed": 7, "n": 4})
                assert r.status_code == 200 and r.headers["x-mask-id"] == mask_id, r.text
                seen.append(hashlib.sha256(r.content).hexdigest())
        assert seen[0] == seen[1]
    finally:
        st.close()
