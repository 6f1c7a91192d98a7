"""The job lifecycle, exhaustively: every (status, event) pair is either allowed with its result
or refused, in the Python table and in the Lua scripts on a real redis-server alike.

`EXPECTED` is written here from the lifecycle the docs describe (docs/OPERATIONS.md, the
module docstring of store/lifecycle.py), not read from the code's table, so a change of either
the table or a script that disagrees with it fails here.
"""
from __future__ import annotations

import json

import pytest

from store.connection import connect
from store.jobs import JobStore
from store.lifecycle import (
    ACTIVE,
    FINISHED,
    TERMINAL,
    TRANSITIONS,
    Event,
    Status,
    next_status,
    status_index,
)

Q, R, OK, F, C = "queued", "running", "succeeded", "failed", "cancelled"
EXPECTED: dict[tuple[str, str], str] = {
    (Q, "start"): R,
    (Q, "cancel"): C,
    (R, "start"): R,  # a new holder re-takes a job whose lease expired
    (R, "reclaim"): R,
    (R, "cancel"): R,  # flagged; its worker stops at the next iteration
    (R, "succeed"): OK,
    (R, "fail"): F,
    (R, "stop_cancelled"): C,
    (R, "hand_back"): Q,
    (R, "retry"): Q,
    (R, "give_up"): F,
    (R, "abandon"): C,
    (R, "expire"): F,
}
PAIRS = [(s.value, e.value) for s in Status for e in Event]


@pytest.fixture
def store(server):
    client = connect(server.url)
    client.flushdb()
    return JobStore(client)


def job_in(store: JobStore, status: str) -> str:
    """A job record put straight into `status`, its indexes to match."""
    job_id = store.create(domain="d", dataset="x", preset="demo", config={"iterations": 10},
                          base={}, promote=False, time_limit_s=3600)["job_id"]
    r = store.r
    r.hset(store.key(job_id), "status", json.dumps(status))
    r.zrem(status_index(Q), job_id)
    r.zadd(status_index(status), {job_id: 1.0})
    if status in TERMINAL:
        r.srem(ACTIVE, job_id)
        r.zadd(FINISHED, {job_id: 1.0})
    return job_id


def fire(store: JobStore, job_id: str, event: str) -> bool:
    """Set up what `event` needs and perform it through the real operation; True if the
    operation reports that it happened."""
    r = store.r
    lease = store.lease(job_id, "w", ttl_s=30)
    if event == "start":
        assert lease.acquire()
        return store.start(lease, "w") == "ok"
    if event == "reclaim":  # its lease ran out while the store was away; same holder
        r.hset(store.key(job_id), "lease_token", json.dumps(lease.token))
        return lease.reclaim() == "ok"
    if event == "cancel":
        return store.request_cancel(job_id) in ("cancelled", "cancelling")
    finish = {"succeed": OK, "fail": F, "stop_cancelled": C, "hand_back": Q}
    if event in finish:
        assert lease.acquire()
        return store.finish(lease, finish[event])
    if event == "retry":
        return store.requeue_running(job_id, "lost", kind="lost", max_failures=5) == "requeued"
    if event == "give_up":
        return store.requeue_running(job_id, "lost", kind="lost", max_failures=1) == "failed"
    if event == "abandon":
        r.hset(store.key(job_id), "cancel_requested", "true")
        return store.requeue_running(job_id, "lost", kind="lost", max_failures=5) == "cancelled"
    if event == "expire":
        return store.expire_running(job_id, "time limit")
    raise AssertionError(f"no operation for event {event}")


def test_python_table_is_the_documented_lifecycle():
    for status, event in PAIRS:
        assert next_status(status, event) == EXPECTED.get((status, event)), (status, event)
    assert {(s.value, e.value): t.value for (s, e), t in TRANSITIONS.items()} == EXPECTED
    assert next_status("nonsense", "start") is None and next_status(Q, "nonsense") is None


@pytest.mark.parametrize("status,event", PAIRS)
def test_lua_scripts_follow_the_table(store, status, event):
    job_id = job_in(store, status)
    happened = fire(store, job_id, event)
    after = store.get(job_id)["status"]
    expected = EXPECTED.get((status, event))
    if expected is None:
        assert not happened and after == status, f"{status} --{event}--> {after}: should be refused"
    else:
        assert happened and after == expected, f"{status} --{event}--> {after}, expected {expected}"
    # the indexes follow the record: one status index, active iff not terminal
    r = store.r
    for s in Status:
        assert (r.zscore(status_index(s), job_id) is not None) == (s.value == after), (s, after)
    assert r.sismember(ACTIVE, job_id) == (after not in TERMINAL)
    assert (r.zscore(FINISHED, job_id) is not None) == (after in TERMINAL)


def _running(store: JobStore, job_id: str, iteration: int = 0):
    lease = store.lease(job_id, "w", ttl_s=30)
    assert lease.acquire() and store.start(lease, "w") == "ok"
    store.update(lease, {"iteration": iteration})
    return lease


def test_failures_clear_only_past_the_last_failure_and_after_the_decay_time(server):
    client = connect(server.url)
    client.flushdb()
    job_id = job_in(JobStore(client), Q)
    slow = JobStore(client, failure_decay_s=3600)
    lease = _running(slow, job_id, iteration=5)
    client.delete(lease.key)  # its worker died at iteration 5
    assert slow.requeue_running(job_id, "lost", max_failures=3) == "requeued"
    assert slow.get(job_id)["failures"] == 1 and slow.get(job_id)["failed_at"] == 5
    lease = _running(slow, job_id, iteration=3)  # resumed from a checkpoint before it
    assert slow.update(lease, {"iteration": 9}) and slow.get(job_id)["failures"] == 1  # too soon
    fast = JobStore(client, failure_decay_s=0)
    assert fast.update(lease, {"iteration": 5}) and fast.get(job_id)["failures"] == 1  # not past it
    assert fast.update(lease, {"iteration": 6}) and fast.get(job_id)["failures"] == 0  # real progress


def test_a_loss_blamed_on_the_store_counts_no_failure(server):
    client = connect(server.url)
    client.flushdb()
    store = JobStore(client)
    job_id = job_in(store, Q)
    for _ in range(5):  # far past the cap, none counted
        lease = _running(store, job_id)
        client.delete(lease.key)
        assert store.requeue_running(job_id, "outage", max_failures=2, count=False) == "requeued"
    job = store.get(job_id)
    assert job["status"] == Q and job["failures"] == 0 and job["requeues"] == 5


def test_outages_are_recorded_by_a_process_that_saw_them_in_the_servers_clock(server):
    import time

    from store.outages import OutageLog

    client = connect(server.url)
    client.flushdb()
    log = OutageLog(client)
    log.failed()
    time.sleep(0.2)
    assert log.succeeded() < 1.0 and log.spans_after(0) == []  # a blip is no outage
    before = log.server_time()
    log.failed()
    time.sleep(1.2)
    assert log.failing_for >= 1.2
    assert log.succeeded() >= 1.2
    (start, end), = log.spans_after(before - 5)
    assert end >= before + 1.2 and 1.2 <= end - start < 5
    assert log.spans_after(end + 0.01) == []  # cjson keeps 14 digits: the span ends at `end`, give or take


def test_a_lease_renewal_gives_up_before_the_lease_runs_out_when_redis_hangs(server):
    """A renewal that waited for the 30 s socket timeout would land after a 60 s lease had run
    out; the lease's own connection times out at a quarter of it, so the heartbeat tries again."""
    import os
    import signal
    import time

    import redis

    client = connect(server.url)
    client.flushdb()
    store = JobStore(client)
    lease = store.lease(job_in(store, Q), "w", ttl_s=2.0)
    assert lease.acquire() and lease.renew()
    os.kill(server.proc.pid, signal.SIGSTOP)  # the server hangs; its connections stay open
    try:
        t0 = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            lease.renew()
        waited = time.monotonic() - t0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert waited < lease.ttl_s, waited
    assert lease.renew()  # the server answers again, the lease still ours
