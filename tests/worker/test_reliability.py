"""Crashes, restarts and redeliveries with real worker processes, a real redis-server and the
API under uvicorn: a job runs once, resumes from its checkpoint, never corrupts the catalog."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from slt_stack import Stack, assert_catalog_intact, copy_images

from store.domains import DomainRegistry
from store.jobs import search_config
from store.settings import SharedSettings
from worker.app import QUEUE, producer
from worker.queue import JOB_HEADER, SEARCH_TASK, send_search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    home = tmp_path_factory.mktemp("reliability") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "tiny")
    st = Stack(home)
    try:
        st.start_api()
        yield st
    finally:
        st.close()


def live_workers(stack: Stack, n: int) -> list:
    """At least n running workers."""
    alive = [w for w in stack.workers if w.poll() is None]
    while len(alive) < n:
        alive.append(stack.start_worker())
    return alive


def checkpointed(stack: Stack, job_id: str, at_least: int):
    ckpt = stack.home / "jobs" / job_id / "checkpoint.pt"
    return lambda j: j["status"] == "running" and j["iteration"] >= at_least and ckpt.exists()


def checkpoint_iteration(stack: Stack, job_id: str) -> int:
    return int(torch.load(stack.home / "jobs" / job_id / "checkpoint.pt", weights_only=True)["iteration"])


def attempts_logged(stack: Stack, job_id: str) -> int:
    return sum(stack.log(n).count(f"job {job_id}: tiny on tiny, attempt") for n in stack.names.values())


def test_kill_9_mid_run_resumes_from_the_checkpoint_on_a_new_worker(stack: Stack):
    for w in stack.workers:
        stack.stop_worker(w)
    before = set(assert_catalog_intact(stack.home))
    first = stack.start_worker()
    job_id = stack.submit("tiny", iterations=12)
    stack.wait_job(job_id, checkpointed(stack, job_id, 4))
    saved = checkpoint_iteration(stack, job_id)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert stack.job(job_id)["status"] == "running"  # until its lease runs out
    assert set(assert_catalog_intact(stack.home)) == before  # the crash wrote nothing there

    stack.start_worker()
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    assert stack.store.get(job_id)["requeues"] == 1  # the watchdog found its lease expired
    assert any(f"job {job_id}: worker" in stack.log(n) and "lost; sending the job again" in stack.log(n)
               for n in stack.names.values())
    assert job["attempts"] == 2 and attempts_logged(stack, job_id) == 2  # no third, no concurrent run
    assert saved >= 1 and job["resumed_from"] >= saved  # resumed, not restarted from zero
    new = set(assert_catalog_intact(stack.home)) - before
    assert new == {job["mask_id"]}  # exactly one mask
    assert DomainRegistry(stack.store.r).active("tiny") == job["mask_id"]
    assert not (stack.home / "jobs" / job_id).exists()


def test_redelivered_message_for_a_running_job_does_nothing(stack: Stack):
    live_workers(stack, 2)
    before = set(assert_catalog_intact(stack.home))
    job_id = stack.submit("tiny", iterations=10)
    stack.wait_job(job_id, lambda j: j["status"] == "running" and j["iteration"] >= 2)
    record = stack.store.get(job_id)
    holder = stack.store.lease_holder(job_id)
    # the very message again, as Redis redelivers an unacknowledged one; the idle worker takes it
    producer(stack.redis.url).send_task(SEARCH_TASK, args=[job_id], task_id=record["task_id"],
                                        queue=QUEUE, headers={JOB_HEADER: job_id})
    deadline = time.monotonic() + 60
    while not any(f"job {job_id} runs elsewhere" in stack.log(n) for n in stack.names.values()):
        assert time.monotonic() < deadline, "the repeated message was not consumed"
        time.sleep(0.2)
    job = stack.job(job_id)
    assert job["status"] == "running" and job["attempts"] == 1
    assert stack.store.lease_holder(job_id) == holder

    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and attempts_logged(stack, job_id) == 1
    assert set(assert_catalog_intact(stack.home)) - before == {job["mask_id"]}


def test_sigterm_hands_the_job_back_and_another_worker_resumes_it(stack: Stack):
    live_workers(stack, 2)
    before = set(assert_catalog_intact(stack.home))
    job_id = stack.submit("tiny", iterations=12)
    stack.wait_job(job_id, checkpointed(stack, job_id, 4))
    saved = checkpoint_iteration(stack, job_id)
    pid = int(stack.store.get(job_id)["worker"].rsplit(":", 1)[1])
    runner = next(w for w in stack.workers if w.pid == pid)
    assert stack.stop_worker(runner, signal.SIGTERM) == 0  # a warm shutdown, within one iteration
    assert f"job {job_id} handed back" in stack.log(stack.names[pid])
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2 and job["resumed_from"] >= saved >= 1
    assert stack.store.get(job_id)["requeues"] == 0  # handed back by its worker, not found dead
    assert set(assert_catalog_intact(stack.home)) - before == {job["mask_id"]}


def test_watchdog_resends_a_lost_message_and_time_limits_fail_jobs(stack: Stack):
    live_workers(stack, 1)
    settings = SharedSettings(home=stack.home, search_features="random", checkpoint_every_s=0.5)
    cfg = lambda n: search_config("demo", {"iterations": n, "batch_size": 2}, settings)  # noqa: E731
    base = {"width": 0.0625}
    # a record whose message never reached the broker (lost with a worker or with Redis)
    lost = stack.store.create(domain="tiny", dataset="tiny", preset="demo", config=cfg(4), base=base,
                              promote=False, time_limit_s=600)["job_id"]
    stack.store.set_fields(lost, enqueued=time.time() - 60)
    # a job that cannot finish within its limit
    slow = stack.store.create(domain="tiny", dataset="tiny", preset="demo", config=cfg(100_000),
                              base=base, promote=False, time_limit_s=3)["job_id"]
    send_search(producer(stack.redis.url), stack.store, slow)

    job = stack.wait_job(slow)
    assert job["status"] == "failed" and "time limit" in job["error"] and job["mask_id"] is None
    job = stack.wait_job(lost)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert any("message is gone; sending it again" in stack.log(n) for n in stack.names.values())
    assert_catalog_intact(stack.home)
