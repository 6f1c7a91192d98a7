"""Job records, leases and the broker view on a real redis-server (no worker process)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kombu import Connection

from store.connection import EmbeddedRedis, connect
from store.jobs import JobStore
from store.settings import SharedSettings
from worker.app import QUEUE, producer
from worker.queue import pending_job_ids, search_config, send_search


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def store(redis_url):
    client = connect(redis_url)
    client.flushdb()
    return JobStore(client)


@pytest.fixture
def settings(tmp_path: Path) -> SharedSettings:
    return SharedSettings(home=tmp_path, search_features="random", checkpoint_every_s=2.5)


def new_job(store: JobStore, settings: SharedSettings, **kw) -> dict:
    return store.create(domain="d", dataset="ds", preset="demo",
                        config=search_config("demo", {"iterations": 10}, settings),
                        base={"width": 0.0625}, promote=True, time_limit_s=kw.get("time_limit_s", 60))


def test_search_config_is_fixed_at_submission(settings):
    cfg = search_config("demo", {"k": 0.3, "iterations": 7}, settings)
    assert cfg["k"] == 0.3 and cfg["iterations"] == 7 and cfg["batch_size"] == 32  # the preset's
    assert cfg["features"] == "random" and cfg["checkpoint_every_s"] == 2.5  # the operator's
    json.dumps(cfg)  # stored as JSON
    with pytest.raises(ValueError):
        search_config("nope", {}, settings)


def test_lease_is_exclusive_until_it_expires(store, settings):
    job = new_job(store, settings)
    a = store.lease(job["job_id"], "host-a", ttl_s=0.5)
    b = store.lease(job["job_id"], "host-b", ttl_s=0.5)
    assert a.acquire() and not b.acquire()
    assert store.lease_holder(job["job_id"]) == a.token
    assert a.renew() and not b.renew()
    time.sleep(0.7)  # a's worker "died": no renewal
    assert store.lease_holder(job["job_id"]) is None
    assert b.acquire() and not a.renew()  # taken over; the old holder learns it
    a.release()  # releasing someone else's lease does nothing
    assert store.lease_holder(job["job_id"]) == b.token
    b.release()
    assert store.lease_holder(job["job_id"]) is None


def test_heartbeat_keeps_the_lease_and_notices_a_takeover(store, settings):
    job_id = new_job(store, settings)["job_id"]
    lease = store.lease(job_id, "w", ttl_s=0.6)
    assert lease.acquire()
    with lease.heartbeat():
        time.sleep(1.5)  # longer than the TTL: only the heartbeat keeps it
        assert store.lease_holder(job_id) == lease.token and not lease.lost.is_set()
        store.r.set(store.key(job_id, "lease"), "someone-else")
        time.sleep(0.5)
        assert lease.lost.is_set()


def test_only_the_lease_holder_writes_progress_and_results(store, settings):
    job_id = new_job(store, settings)["job_id"]
    lease = store.lease(job_id, "w", ttl_s=5)
    other = store.lease(job_id, "x", ttl_s=5)
    assert lease.acquire()
    assert store.start(other, "x") == "lost"
    assert store.start(lease, "w") == "ok"
    job = store.get(job_id)
    assert job["status"] == "running" and job["attempts"] == 1 and job["started"] is not None
    assert store.update(lease, {"iteration": 3, "progress": 0.3}, point=(3, 0.5), preview=b"png")
    assert not store.update(other, {"iteration": 9})
    assert store.get(job_id)["iteration"] == 3 and store.losses(job_id) == [[3, 0.5]]
    assert store.preview(job_id) == b"png"
    assert not store.finish(other, "succeeded")
    assert store.finish(lease, "succeeded", mask_id="m")
    assert store.get(job_id)["status"] == "succeeded" and job_id not in store.active_ids()
    assert not store.update(lease, {"iteration": 4})  # a finished job takes no more progress
    assert store.start(lease, "w") == "succeeded"


def test_loss_points_are_bounded(store, settings):
    from store.jobs import LOSS_POINTS

    job_id = new_job(store, settings)["job_id"]
    lease = store.lease(job_id, "w", ttl_s=5)
    assert lease.acquire() and store.start(lease, "w") == "ok"
    for i in range(LOSS_POINTS + 20):
        store.update(lease, {}, point=(i, float("nan") if i == 3 else 1.0))
    pts = store.losses(job_id)
    assert len(pts) == LOSS_POINTS and pts[0][0] == 20 and pts[-1][0] == LOSS_POINTS + 19


def test_cancel(store, settings):
    queued = new_job(store, settings)["job_id"]
    assert store.request_cancel(queued) == "cancelled"
    assert store.get(queued)["status"] == "cancelled" and queued not in store.active_ids()
    assert store.request_cancel(queued) == "finished"
    assert store.request_cancel("0" * 32) == "missing"
    running = new_job(store, settings)["job_id"]
    lease = store.lease(running, "w", ttl_s=5)
    assert lease.acquire() and store.start(lease, "w") == "ok"
    assert store.control(running) == ("running", False)
    assert store.request_cancel(running) == "cancelling"
    assert store.control(running) == ("running", True)  # the search sees it at its next iteration


def test_watchdog_transitions(store, settings):
    job_id = new_job(store, settings)["job_id"]
    lease = store.lease(job_id, "w", ttl_s=0.3)
    assert lease.acquire() and store.start(lease, "w") == "ok"
    assert store.requeue_running(job_id, "note") == "leased"  # its worker is alive
    time.sleep(0.5)
    assert store.requeue_running(job_id, "worker lost") == "requeued"
    job = store.get(job_id)
    assert job["status"] == "queued" and job["note"] == "worker lost" and job["requeues"] == 1
    assert store.requeue_running(job_id, "again") == "queued"  # only once
    # a second attempt resumes; a cancel asked while its worker is gone ends it
    lease2 = store.lease(job_id, "w2", ttl_s=0.3)
    assert lease2.acquire() and store.start(lease2, "w2") == "ok"
    assert store.get(job_id)["attempts"] == 2
    store.request_cancel(job_id)
    time.sleep(0.5)
    assert store.requeue_running(job_id, "x") == "cancelled"
    stuck = new_job(store, settings)["job_id"]
    lease3 = store.lease(stuck, "w3", ttl_s=5)
    assert lease3.acquire() and store.start(lease3, "w3") == "ok"
    assert store.expire_running(stuck, "time limit")
    assert store.get(stuck)["status"] == "failed" and store.get(stuck)["error"] == "time limit"
    assert store.claim_resend(stuck, 5) and not store.claim_resend(stuck, 5)


def test_pending_job_ids_reads_queued_and_taken_messages(store, settings, redis_url):
    app = producer(redis_url)
    a, b = new_job(store, settings)["job_id"], new_job(store, settings)["job_id"]
    send_search(app, store, a)
    send_search(app, store, b, after="handback")  # handed back: served before new ones
    assert store.get(a)["task_id"].startswith(a)
    assert (store.r.llen(QUEUE), store.r.llen(f"{QUEUE}\x06\x163")) == (1, 1)
    assert pending_job_ids(store.r, stale_after_s=60) == {a, b}
    with Connection(redis_url) as conn:
        q = conn.SimpleQueue(QUEUE, no_ack=False)
        msg = q.get(timeout=5)  # taken by a "worker", not acknowledged
        taken = msg.headers["slt_job"]
        assert pending_job_ids(store.r, stale_after_s=60) == {a, b}
        time.sleep(0.2)
        # taken long ago and still not running: its worker is gone
        assert pending_job_ids(store.r, stale_after_s=0.1) == {a, b} - {taken}
        msg.ack()
        q.close()
    assert pending_job_ids(store.r, stale_after_s=60) == {a, b} - {taken}


def test_watchdog_takes_over_a_stalled_search_and_sends_it_behind(redis_url, store, tmp_path):
    """A worker that still renews its lease but whose search made no progress for SLT_STALL_S."""
    from worker.runner import Context
    from worker.watchdog import Watchdog

    settings = SharedSettings(home=tmp_path, search_features="random", stall_s=5, lease_s=30)
    job = new_job(store, settings)
    hung = store.lease(job["job_id"], "hung", ttl_s=30)
    assert hung.acquire() and store.start(hung, "hung:1") == "ok"
    ctx = Context.for_app(producer(redis_url), settings)
    Watchdog(ctx).sweep()
    assert store.get(job["job_id"])["status"] == "running"  # started just now: not stalled
    store.update(hung, {"heartbeat": time.time() - 6})
    Watchdog(ctx).sweep()
    rec = store.get(job["job_id"])
    assert rec["status"] == "queued" and rec["failures"] == 1 and "SLT_STALL_S" in rec["note"]
    assert not hung.renew()  # revoked: the hung worker stops if it ever wakes up
    assert job["job_id"] in pending_job_ids(store.r, stale_after_s=30)
    with Connection(redis_url) as conn:  # sent again behind new jobs (kombu's priority list 6)
        raw = conn.default_channel.client.lrange(f"{QUEUE}\x06\x166", 0, -1)
    assert [json.loads(m)["headers"]["slt_job"] for m in raw] == [job["job_id"]]


def test_an_error_after_the_search_is_retried_then_fails_with_it(redis_url, store, tmp_path,
                                                                  emoji_google_dir):
    """Storing the mask fails every time (the catalog's disk): each delivery counts a failure,
    the third ends the job `failed` with the real error; the search itself always finished."""
    from slt_stack import copy_images

    from worker.runner import Context, SearchRun

    settings = SharedSettings(home=tmp_path / "home", search_features="random", max_attempts=3)
    copy_images(emoji_google_dir, settings.datasets_dir / "ds", n=8)
    job = store.create(domain="d", dataset="ds", preset="demo", base={"width": 0.0625}, promote=True,
                       time_limit_s=600,
                       config=search_config("demo", {"iterations": 2, "batch_size": 2}, settings))
    ctx = Context.for_app(producer(redis_url), settings)
    settings.masks_dir.rmdir()
    settings.masks_dir.write_bytes(b"")  # the catalog's folder is gone: every write fails
    outcomes = [SearchRun(ctx, job["job_id"])() for _ in range(3)]
    assert outcomes == ["retry", "retry", "failed"], outcomes
    rec = store.get(job["job_id"])
    assert rec["status"] == "failed" and rec["attempts"] == 3 and rec["mask_id"] is None
    assert rec["error"].startswith("failed 3 times; last error: ") and "Error" in rec["error"], rec["error"]
    assert store.counts()["failed"] == 1 and job["job_id"] not in store.active_ids()
