"""The watchdog: a thread in every worker that keeps jobs moving when workers die.

Every `lease_s / 2` seconds (and once at start) it sweeps the active jobs:
- `running` with no live lease: its worker died (its heartbeat stopped). The job goes back
  to `queued` and its message is sent again, so this or another worker resumes it from its
  checkpoint. Redis would redeliver the old message only after the visibility timeout.
- `queued` with no message in the broker (lost with a worker that took it and died before
  taking the lease, or with Redis): its message is sent again.
- `running` long past its time limit while its lease lives (a worker stuck outside the search
  loop): `failed`, with the reason.
Several workers may sweep at once: the status changes are atomic and a resend is claimed
first, so a job is sent again once.
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from store.jobs import QUEUED, RUNNING
from worker.queue import pending_job_ids, send_search
from worker.runner import Context

log = logging.getLogger(__name__)


class Watchdog(threading.Thread):
    def __init__(self, ctx: Context):
        super().__init__(name="slt-watchdog", daemon=True)
        self.ctx = ctx
        self.interval = max(0.5, ctx.settings.lease_s / 2)
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.sweep()
            except redis.RedisError as e:
                log.warning("watchdog: redis unavailable (%s); trying again", e)
            except Exception:  # the thread must outlive any one bad record
                log.exception("watchdog sweep failed")
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        self.halt.set()

    def sweep(self) -> None:
        store, lease_s = self.ctx.store, self.ctx.settings.lease_s
        now, pending, unread = time.time(), None, True
        for job_id in store.active_ids():
            job = store.get(job_id)
            if job is None:
                continue
            leased = store.lease_holder(job_id) is not None
            if job["status"] == RUNNING and leased:
                self._check_time_limit(job, now)
            elif job["status"] == RUNNING:
                self._requeue(job)
            elif job["status"] == QUEUED and not leased and now - (job.get("enqueued") or 0) > lease_s:
                if unread:  # the broker's lists are read once per sweep, and only when needed
                    pending, unread = pending_job_ids(store.r, stale_after_s=lease_s), False
                if pending is not None and job_id not in pending and store.claim_resend(job_id, lease_s):
                    log.warning("job %s: queued but its message is gone; sending it again", job_id)
                    send_search(self.ctx.app, store, job_id, resume=job["attempts"] > 0)

    def _requeue(self, job: dict) -> None:
        job_id = job["job_id"]
        note = (f"its worker stopped responding at iteration {job['iteration']}; "
                "resuming from the last checkpoint")
        outcome = self.ctx.store.requeue_running(job_id, note)
        if outcome == "requeued":
            log.warning("job %s: worker %s lost; sending the job again", job_id, job["worker"])
            send_search(self.ctx.app, self.ctx.store, job_id, resume=True)
        elif outcome == "cancelled":
            log.info("job %s: its worker was lost and a cancel was asked: cancelled", job_id)

    def _check_time_limit(self, job: dict, now: float) -> None:
        # the search itself fails a job at its limit; this catches a worker stuck outside the loop
        grace = 2 * self.ctx.settings.lease_s
        if job["started"] is None or now <= job["started"] + job["time_limit_s"] + grace:
            return
        error = (f"time limit: still running after {job['time_limit_s']:g} s "
                 "(SLT_JOB_TIME_LIMIT_S), and its worker did not stop it")
        if self.ctx.store.expire_running(job["job_id"], error):
            log.error("job %s failed: past its time limit, its worker unresponsive", job["job_id"])
