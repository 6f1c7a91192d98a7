"""The watchdog: a thread in every worker that keeps jobs moving when workers die or hang,
and keeps the shared store bounded.

Every `lease_s / 2` seconds (and once at start) it sweeps the active jobs:
- `running` with no live lease: its worker died (its heartbeat stopped). One failure is
  counted; the job goes back to `queued` and its message is sent again behind the jobs that
  have not failed, so this or another worker resumes it from its checkpoint (the local one, or
  the one published to the shared store). At SLT_MAX_ATTEMPTS failures it ends `failed`:
  "worker lost N times, last at iteration I". Failures are cleared once the job gets past the
  iteration where the last one happened (a crash that repeats at one place still ends it).
- ... unless the lease ran out during a store outage (store.outages: a live process saw the
  store away over the job's silence). Then its worker is given a lease's time after the
  outage to take its lease back and go on; if it does not, the job is requeued with no
  failure counted: the store, not the job, was at fault.
- `running` with a live lease but no progress for SLT_STALL_S (a search hung inside a kernel,
  a dead disk): its lease is revoked and it is handled as above ("stalled").
- `queued` with no message in the broker (lost with a worker that took it and died before
  taking the lease, or with Redis): its message is sent again.
- `running` long past its time limit while its lease lives: `failed`, with the reason.
Several workers may sweep at once: the status changes are atomic and a resend is claimed
first, so a job is sent again once.

About once a minute one worker of the cluster (a lock in Redis) also deletes the jobs
finished more than SLT_JOB_RETENTION_S ago (records, previews, curves, checkpoints); about every ten
minutes it collects blobs nothing refers to (a scan of every blob and manifest, so not each
minute: a blob is only deleted SLT_GC_GRACE_S after it was first found unreferenced anyway).
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from store.faults import describe
from store.gc import collect_blobs, gc_options
from store.jobs import QUEUED, RUNNING
from worker import metrics
from worker.queue import pending_job_ids, send_search
from worker.runner import Context

log = logging.getLogger(__name__)

MAINTENANCE_S = 60.0
MAINTENANCE_LOCK = "slt:maintenance"
GC_S = 600.0
GC_LOCK = "slt:maintenance:gc"


class Watchdog(threading.Thread):
    def __init__(self, ctx: Context):
        super().__init__(name="slt-watchdog", daemon=True)
        self.ctx = ctx
        self.interval = max(0.5, ctx.settings.lease_s / 2)
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                # an outage this process lived through (calls failing, or one hanging) is recorded
                self.ctx.outages.timed(self.ctx.client.ping)
                self.sweep()
                self.maintain()
            except redis.RedisError as e:
                self.ctx.outages.failed()
                log.warning("watchdog: %s; trying again", describe(e))
            except Exception:  # the thread must outlive any one bad record
                log.exception("watchdog sweep failed")
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        self.halt.set()

    def sweep(self) -> None:
        store, s = self.ctx.store, self.ctx.settings
        now, pending, unread = time.time(), None, True
        for job_id in store.active_ids():
            job = store.get(job_id)
            if job is None:
                continue
            leased = store.lease_holder(job_id) is not None
            if job["status"] == RUNNING and leased:
                if not self._check_time_limit(job, now):
                    self._check_stalled(job, now)
            elif job["status"] == RUNNING:
                self._requeue(job, "lost")
            elif job["status"] == QUEUED and not leased and now - (job.get("enqueued") or 0) > s.lease_s:
                if unread:  # the broker's lists are read once per sweep, and only when needed
                    pending, unread = pending_job_ids(store.r, stale_after_s=s.lease_s), False
                if pending is not None and job_id not in pending and store.claim_resend(job_id, s.lease_s):
                    log.warning("job %s: queued but its message is gone; sending it again", job_id)
                    send_search(self.ctx.app, store, job_id,
                                after="failure" if job.get("failures") else "new")

    def _outages_over(self, job: dict) -> list[tuple[float, float]]:
        """Recorded store outages that ended after the job last showed progress: a lease that
        ran out then is the store's fault, not the worker's."""
        return self.ctx.outages.spans_after(job.get("heartbeat") or job.get("started") or 0.0)

    def _requeue(self, job: dict, kind: str, since: float = 0.0) -> str:
        s, job_id, it = self.ctx.settings, job["job_id"], job["iteration"]
        if spans := self._outages_over(job):
            if self.ctx.outages.server_time() < max(end for _, end in spans) + s.lease_s:
                return "waiting"  # its worker may still take its lease back
            longest = max(end - start for start, end in spans)
            note = (f"its lease ran out during a store outage of {longest:.0f} s at iteration {it}; "
                    "resuming from the last checkpoint (no failure counted)")
            outcome = self.ctx.store.requeue_running(job_id, note, max_failures=s.max_attempts,
                                                     kind=kind, since=since, count=False)
            if outcome == "requeued":
                log.warning("job %s: lost during a store outage; sending it again (not counted)", job_id)
                metrics.REQUEUES.labels("outage").inc()
                send_search(self.ctx.app, self.ctx.store, job_id, after="handback")
            return outcome
        failures = (job.get("failures") or 0) + 1
        if kind == "lost":
            note = f"its worker stopped responding at iteration {it}; resuming from the last checkpoint"
            error = f"worker lost {failures} times, last at iteration {it}"
        else:
            note = (f"no progress for {s.stall_s:g} s (SLT_STALL_S) at iteration {it}; "
                    "taken over, resuming from the last checkpoint")
            error = f"stalled {failures} times (no progress for {s.stall_s:g} s), last at iteration {it}"
        if job.get("error"):  # an error recorded by an earlier attempt says more
            error += f"; last error: {job['error']}"
        outcome = self.ctx.store.requeue_running(job_id, note, max_failures=s.max_attempts,
                                                 error=error, kind=kind, since=since)
        if outcome == "requeued":
            log.warning("job %s: worker %s %s; sending the job again", job_id, job["worker"], kind)
            metrics.REQUEUES.labels(kind).inc()
            send_search(self.ctx.app, self.ctx.store, job_id, after="failure")
        elif outcome == "failed":
            log.error("job %s failed: %s", job_id, error)
            metrics.JOBS.labels("failed").inc()
            self.ctx.checkpoints.drop(job_id)
        elif outcome == "cancelled":
            log.info("job %s: its worker was lost and a cancel was asked: cancelled", job_id)
        return outcome

    def _check_stalled(self, job: dict, now: float) -> None:
        last = job.get("heartbeat") or job.get("started") or now
        if now - last > self.ctx.settings.stall_s:
            self._requeue(job, "stalled", since=now - self.ctx.settings.stall_s)

    def _check_time_limit(self, job: dict, now: float) -> bool:
        # the search itself fails a job at its limit; this catches a worker stuck outside the loop
        grace = 2 * self.ctx.settings.lease_s
        if job["started"] is None or now <= job["started"] + job["time_limit_s"] + grace:
            return False
        error = (f"time limit: still running after {job['time_limit_s']:g} s "
                 "(SLT_JOB_TIME_LIMIT_S), and its worker did not stop it")
        if self.ctx.store.expire_running(job["job_id"], error):
            log.error("job %s failed: past its time limit, its worker unresponsive", job["job_id"])
        return True

    def maintain(self, force: bool = False, now: float | None = None) -> None:
        """Retention (per MAINTENANCE_S) and blob collection (per GC_S), each by one worker of
        the cluster. The collector keeps what the catalog, the domains (history included),
        datasets, checkpoints and feature statistics name, and refuses to delete at all when
        the store looks lost or shared (store/gc.py). `now`: the sweep's clock (tests move it)."""
        ctx = self.ctx
        if not force and not ctx.client.set(MAINTENANCE_LOCK, ctx.owner, nx=True, px=int(MAINTENANCE_S * 1000)):
            return
        trim_finished_jobs(ctx, now)
        if not force and not ctx.client.set(GC_LOCK, ctx.owner, nx=True, px=int(GC_S * 1000)):
            return
        collect_blobs(ctx.client, ctx.blobs,
                      [ctx.catalog.referenced_blobs, ctx.domains.referenced,
                       ctx.datasets.referenced, ctx.checkpoints.referenced, ctx.moments.referenced],
                      now=now, **gc_options(ctx.settings))


def trim_finished_jobs(ctx: Context, now: float | None = None) -> int:
    """Jobs finished more than SLT_JOB_RETENTION_S ago go entirely: record, previews, loss
    curve, published checkpoint and index entries; returns how many."""
    n = 0
    while ids := ctx.store.expired(ctx.settings.job_retention_s, now):
        for job_id in ids:
            ctx.checkpoints.drop(job_id)
            ctx.store.delete(job_id)
            n += 1
    if n:
        log.info("retention: %d finished jobs deleted", n)
    return n
