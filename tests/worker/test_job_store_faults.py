"""Store faults that must not cost a job, over a real stack: a redis-server, the API under
uvicorn, `python -m worker` processes on hosts of their own SLT_HOME, and blobs in S3 (moto's
server behind a fault-injecting proxy, tests/s3_faults.py):
- Redis hanging longer than a lease (the server process stopped while the clock runs on, as
  in a partition or a failover), three times;
- S3 failing while a worker on another host takes a job over and fetches its checkpoint."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from s3_faults import S3_ENV, FaultyS3
from slt_stack import Stack, assert_catalog_intact, copy_images

from store.outages import KEY as OUTAGES

pytestmark = pytest.mark.slow

LEASE_S = 4.0
HANG_S = 7.5  # past the lease: every lease in the store runs out while it hangs


@pytest.fixture(scope="module")
def s3():
    with FaultyS3() as s3:
        s3.create_bucket("slt")
        yield s3


@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path, s3: FaultyS3):
    home = tmp_path_factory.mktemp("store-faults") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "tiny")
    # two failures would end a job: the hangs below must count none, a takeover one
    st = Stack(home, SLT_MAX_ATTEMPTS="2", SLT_LEASE_S=str(LEASE_S), SLT_S3_BUCKET="slt",
               SLT_S3_ENDPOINT_URL=s3.endpoint_url, SLT_CHECKPOINT_PUBLISH_S="0", **S3_ENV)
    try:
        st.start_api()
        yield st
    finally:
        st.close()


def hang_redis(stack: Stack, seconds: float) -> None:
    """SIGSTOP the redis-server for `seconds`: clients' requests wait on open connections and
    time out; when it goes on, its clock has moved and every lease has expired."""
    os.kill(stack.redis.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(stack.redis.proc.pid, signal.SIGCONT)


def test_a_search_survives_redis_hangs_longer_than_its_lease(stack: Stack):
    stack.start_worker()
    before = set(assert_catalog_intact(stack.home))
    job_id = stack.submit("tiny", iterations=24)
    at = []
    for _ in range(3):
        j = stack.wait_job(job_id, lambda j: j["status"] == "running"
                           and j["iteration"] >= (at[-1] if at else 0) + 3, timeout=120)
        at.append(j["iteration"])
        hang_redis(stack, HANG_S)
    job = stack.wait_job(job_id, timeout=300)
    log = stack.log("worker-1")
    assert job["status"] == "succeeded", (job, log[-3000:])
    # the store was at fault, not the job: nothing counted, the search went on where it was
    assert job["failures"] == 0, job
    assert log.count(f"job {job_id}: lease taken back after a store outage") == 3, log[-3000:]
    assert job["attempts"] == 1 and job["resumed_from"] is None, job  # never restarted, nothing lost
    assert stack.store.r.zcard(OUTAGES) >= 3  # each hang recorded by the processes that lived it
    assert set(assert_catalog_intact(stack.home)) - before == {job["mask_id"]}


def test_an_s3_error_during_a_takeovers_checkpoint_fetch_is_retried_and_it_resumes(
        stack: Stack, s3: FaultyS3, emoji_google_dir: Path, tmp_path: Path):
    for w in stack.workers:
        stack.stop_worker(w)
    home_b = tmp_path / "host-b"  # another host: no shared disk, no local checkpoint
    copy_images(emoji_google_dir, home_b / "datasets" / "tiny")
    first = stack.start_worker()
    job_id = stack.submit("tiny", iterations=16)
    deadline = time.monotonic() + 180
    while (stack.store.get(job_id).get("checkpoint_iteration") or 0) < 2:  # published to S3
        assert time.monotonic() < deadline, stack.store.get(job_id)
        time.sleep(0.2)
    published = stack.store.get(job_id)["checkpoint_iteration"]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    # every S3 read fails for a while: more than botocore's own retries of one call
    s3.fail_next(6, "GET", path_contains="/slt/blobs/")
    second = stack.start_worker(home=home_b)
    job = stack.wait_job(job_id, timeout=300)
    log = stack.log(stack.names[second.pid])
    assert job["status"] == "succeeded", (job, log[-3000:])
    assert s3.served_faults >= 6 and s3.pending() == 0
    assert f"job {job_id}: fetching its checkpoint: " in log and "retrying in" in log, log[-3000:]
    assert f"job {job_id}: published checkpoint (iteration " in log  # fetched after the retries
    assert job["resumed_from"] is not None and job["resumed_from"] >= published > 0, job  # not from 0
    assert job["failures"] == 1  # the lost worker, not the S3 outage
