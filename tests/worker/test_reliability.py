"""Crashes, restarts and redeliveries with real worker processes, a real redis-server and the
API under uvicorn: a job runs once, resumes from its checkpoint, never corrupts the catalog."""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from slt_stack import Stack, assert_catalog_intact, copy_images

from store.connection import EmbeddedRedis
from store.domains import DomainRegistry
from store.settings import SharedSettings
from worker.app import QUEUE, producer
from worker.queue import JOB_HEADER, SEARCH_TASK, search_config, send_search

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


def test_flower_and_worker_metrics_see_every_worker_and_job(stack: Stack):
    """Celery's monitor on this cluster: task events and heartbeats are on, so Flower lists the
    worker and the job's task; the worker's own Prometheus endpoint counts its iterations."""
    import subprocess
    import sys

    import httpx

    from store.connection import free_port

    for w in stack.workers:
        stack.stop_worker(w)
    metrics_port, flower_port = free_port(), free_port()
    stack.env["SLT_WORKER_METRICS_PORT"] = str(metrics_port)
    try:
        w = stack.start_worker()
    finally:
        stack.env.pop("SLT_WORKER_METRICS_PORT")
    env = {**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "--broker",
                               stack.redis.url, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
                              env=env, stdout=open(stack.home / "logs" / "flower.log", "ab"),
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(3)  # flower subscribes to the event stream before the task is sent
        job_id = stack.submit("tiny", domain="watched", iterations=4)
        assert stack.wait_job(job_id)["status"] == "succeeded"
        name = f"slt-{w.pid}@"
        url = f"http://127.0.0.1:{flower_port}"
        deadline, workers, tasks = time.monotonic() + 60, {}, {}
        while time.monotonic() < deadline:
            try:
                workers = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, timeout=10).json()
                tasks = httpx.get(f"{url}/api/tasks", timeout=10).json()
            except (httpx.HTTPError, ValueError):
                pass
            if any(k.startswith(name) for k in workers) and any(
                    t.get("args", "").find(job_id) >= 0 and t.get("state") == "SUCCESS" for t in tasks.values()):
                break
            time.sleep(1)
        assert any(k.startswith(name) for k in workers), (workers, stack.log("flower"))
        assert any(job_id in t.get("args", "") and t.get("state") == "SUCCESS" for t in tasks.values()), tasks
        prom = httpx.get(f"{url}/metrics", timeout=10).text
        assert "flower_events_total" in prom and "slt.search_mask" in prom
        own = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        iterations = [float(line.split()[-1]) for line in own.splitlines()
                      if line.startswith("slt_worker_search_iterations_total")]
        assert iterations and iterations[0] == 4, own
        assert 'slt_worker_jobs_ended_total{status="succeeded"} 1.0' in own
    finally:
        flower.terminate()
        flower.wait(30)
        stack.stop_worker(w)


def _context(stack: Stack):
    from worker.runner import Context

    settings = SharedSettings(home=stack.home / "watchdog-host", lease_s=4, max_attempts=3)
    return Context.for_app(producer(stack.redis.url), settings)


def _kill_runner(stack: Stack, job_id: str, at_least: int = 2) -> int:
    """SIGKILL the worker running `job_id` once it is past `at_least`; its iteration then."""
    j = stack.wait_job(job_id, lambda j: j["status"] == "running" and j["iteration"] >= at_least)
    pid = int(stack.store.get(job_id)["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    next(w for w in stack.workers if w.pid == pid).wait()
    return j["iteration"]


def test_a_job_that_keeps_killing_its_worker_fails_at_the_cap_and_others_run_meanwhile(stack: Stack):
    """An out-of-memory kill, every time: three lost workers, then `failed` with the reason;
    each time it goes behind the jobs that have not failed."""
    from worker.watchdog import Watchdog

    for w in stack.workers:
        stack.stop_worker(w)
    watchdog = Watchdog(_context(stack))
    crasher = stack.submit("tiny", domain="crasher", iterations=100_000)
    behind = []
    for attempt in (1, 2, 3):
        stack.start_worker()
        _kill_runner(stack, crasher)
        deadline = time.monotonic() + 30  # its lease (4 s) runs out; a watchdog finds it lost
        while stack.store.get(crasher)["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
            watchdog.sweep()
        if attempt < 3:
            assert stack.store.get(crasher)["status"] == "queued"
            behind.append(stack.submit("tiny", domain=f"behind{attempt}", iterations=3))
    job = stack.job(crasher)
    assert job["status"] == "failed" and job["attempts"] == 3, job
    assert job["error"].startswith("worker lost 3 times, last at iteration "), job["error"]
    # each job submitted after a failure ran, to its end, before the failed job's next attempt
    crashes = _attempt_spans(stack, crasher)
    assert len(crashes) == 3, crashes
    for i, job_id in enumerate(behind):
        assert stack.job(job_id)["status"] == "succeeded"
        (_, ended, _), = _attempt_spans(stack, job_id)
        assert ended < crashes[i + 1][0], (job_id, ended, crashes)
    assert stack.store.counts()["failed"] >= 1


def _attempt_spans(stack: Stack, job_id: str) -> list[tuple[float, float, str]]:
    """(start, end, worker) of every attempt of `job_id`, from the workers' logs."""
    import re
    from datetime import datetime

    stamp = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
    spans = []
    for name in stack.names.values():
        start = None
        for line in stack.log(name).splitlines():
            m = stamp.match(line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if f"job {job_id}: " in line and ", attempt " in line:
                start = t
            elif f"job {job_id}: attempt ends" in line and start is not None:
                spans.append((start, t, name))
                start = None
        if start is not None:
            spans.append((start, math.inf, name))
    return sorted(spans)


def test_redis_killed_mid_job_and_restarted_loses_no_job_and_runs_none_twice(stack: Stack):
    live_workers(stack, 2)
    before = set(assert_catalog_intact(stack.home))
    jobs = [stack.submit("tiny", domain=f"blip{i}", iterations=16) for i in range(2)]
    stack.wait_job(jobs[0], lambda j: j["status"] == "running" and j["iteration"] >= 3)
    port, root = stack.redis.port, stack.redis.root
    stack.redis.proc.kill()
    stack.redis.proc.wait()
    time.sleep(6)  # longer than a lease: the running worker must give its job up
    stack.redis = EmbeddedRedis(root, port=port).start()
    for job_id in jobs:
        done = stack.wait_job(job_id, timeout=300)
        assert done["status"] == "succeeded", done
        spans = _attempt_spans(stack, job_id)
        assert spans, f"no attempt of {job_id} in the logs"
        for (_, e1, n1), (s2, _, n2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"job {job_id} ran on {n1} and {n2} at once: {spans}"
    new = set(assert_catalog_intact(stack.home)) - before
    assert new == {stack.job(j)["mask_id"] for j in jobs}
