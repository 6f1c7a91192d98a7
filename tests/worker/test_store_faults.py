"""Store faults that must not cost a job: Redis hanging longer than a lease (the server process
stopped while the clock runs on, as in a partition or a failover), over a real stack: a
redis-server, the API under uvicorn and a `python -m worker` process."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from slt_stack import Stack, assert_catalog_intact, copy_images

from store.outages import KEY as OUTAGES

pytestmark = pytest.mark.slow

LEASE_S = 4.0
HANG_S = 7.5  # past the lease: every lease in the store runs out while it hangs


@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    home = tmp_path_factory.mktemp("store-faults") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "tiny")
    # two failures would end a job: the hangs below must count none
    st = Stack(home, SLT_MAX_ATTEMPTS="2", SLT_LEASE_S=str(LEASE_S))
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
