"""What a worker does with a job: take its lease, search (resuming any checkpoint), put the
mask in the catalog, promote it; and the smaller dataset-statistics and evaluation tasks.

One `Context` per worker process holds its Redis client, stores and device. `STOP` is set
when the worker is asked to shut down: the running search stops at its next iteration and
hands its job back (queued again), to be resumed from its checkpoint.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from celery import Celery

from store.blobs import BlobStore, blob_store
from store.catalog import SharedCatalog
from store.checkpoints import SharedCheckpoints
from store.connection import connect
from store.datasets import SharedDatasets
from store.domains import DomainRegistry
from store.faults import describe, transient
from store.job_events import PHASE, PROGRESS, JobEvents, progress_event
from store.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, Lease, LeaseLost
from store.lifecycle import Event, Outcome, next_status
from store.moments import SharedMoments
from store.outages import OutageLog
from store.settings import SharedSettings, get_settings
from trainer.data import DatasetError, ImageDataset, open_dataset
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import Progress, SearchCancelled, config_from_record, search
from trainer.settings import resolve_device
from worker import metrics
from worker.app import LOW_PRIORITY
from worker.queue import EVALUATE_TASK, QUEUE, send_search

log = logging.getLogger(__name__)

STOP = threading.Event()  # the worker is shutting down
PROGRESS_EVERY_S = 0.5  # progress writes per job at most this often (previews and the end always)
PHASE_BEAT_S = 5.0  # a job busy before its first iteration says so at least this often
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # backoff of a step that meets a transient store fault


@dataclass
class Context:
    """A worker process's long-lived objects."""

    app: Celery
    settings: SharedSettings
    client: redis.Redis
    store: JobStore
    blobs: BlobStore
    catalog: SharedCatalog
    domains: DomainRegistry
    datasets: SharedDatasets
    checkpoints: SharedCheckpoints
    moments: SharedMoments
    owner: str  # host:pid, written into leases and job records
    outages: OutageLog | None = None  # store outages this process lived through (the watchdog's)

    def __post_init__(self) -> None:
        if self.outages is None:
            self.outages = OutageLog(self.client, min_s=self.settings.lease_s / 2)

    @classmethod
    def for_app(cls, app: Celery, settings: SharedSettings | None = None) -> Context:
        settings = settings or get_settings()
        client = connect(app.conf.broker_url, settings.redis_socket_timeout_s)
        blobs = blob_store(settings, client)
        return cls(app, settings, client, JobStore(client, settings.failure_decay_s), blobs,
                   SharedCatalog(client, blobs, MaskCatalog(settings.masks_dir),
                                 local_budget_bytes=settings.mask_disk_bytes),
                   DomainRegistry(client),
                   SharedDatasets(client, blobs, settings.shared_dataset_max_bytes),
                   SharedCheckpoints(client, blobs, settings.checkpoint_max_bytes),
                   SharedMoments(client, blobs), f"{socket.gethostname()}:{os.getpid()}")

    @property
    def device(self) -> str:
        return worker_device(self.settings.device, self.settings.worker_memory_fraction)

    def open_dataset(self, name: str) -> ImageDataset:
        """This host's dataset `name`, else the one uploaded through any replica (fetched from
        the shared store once per host, verified)."""
        path = self.settings.dataset_path(name)
        if not path.exists():
            path = self.datasets.fetch(name, self.settings.cache_dir)
        if path is None:
            raise DatasetError(f"dataset {name!r} not found (GET /datasets lists them)")
        return open_dataset(path, cache_dir=self.settings.cache_dir)

    def moments_dir(self):
        return self.settings.cache_dir / "moments"

    def public_error(self, e: BaseException) -> str:
        """An error for the job record: short, and without this host's directories."""
        text = str(e) if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
        return text.replace(str(self.settings.datasets_dir) + "/", "").replace(
            str(self.settings.home), "$SLT_HOME")[:2000]


@lru_cache(maxsize=1)
def device_name(device: str) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H200)`: the device as a model card names it."""
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def worker_device(name: str, memory_fraction: float) -> str:
    """The search device; on a GPU the worker keeps to its share of memory, so the API serving
    on the same card never runs out."""
    device = resolve_device(name)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_per_process_memory_fraction(memory_fraction, torch.device(device))
        log.info("worker on %s, capped at %.0f%% of its memory", device, 100 * memory_fraction)
    return device


class CheckpointPublisher:
    """Publishes the search's local checkpoint to the shared store (at most every
    SLT_CHECKPOINT_PUBLISH_S, one upload at a time, in a thread so the search never waits), so
    a worker on another host resumes the job from it."""

    def __init__(self, ctx: Context, lease: Lease, path):
        self.ctx, self.lease, self.path = ctx, lease, path
        self._mtime, self._last = None, -math.inf
        self._thread: threading.Thread | None = None

    def __call__(self, iteration: int) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime or (self._thread is not None and self._thread.is_alive()):
            return
        if time.monotonic() - self._last < self.ctx.settings.checkpoint_publish_s:
            return
        self._mtime, self._last = mtime, time.monotonic()
        # saved at the end of the previous iteration: this callback comes first in the next
        self._thread = threading.Thread(target=self._publish, args=(iteration - 1,), daemon=True,
                                        name=f"ckpt-{self.lease.job_id[:8]}")
        self._thread.start()

    def _publish(self, iteration: int) -> None:
        job_id = self.lease.job_id
        try:
            if self.lease.lost.is_set():
                return
            if self.ctx.checkpoints.publish(job_id, self.path, iteration, self.lease.token) is not None:
                self.ctx.store.update(self.lease, {"checkpoint_iteration": iteration})
                log.info("job %s: checkpoint at iteration %d published", job_id, iteration)
        except Exception as e:  # the local checkpoint still protects this host's restarts
            log.warning("job %s: checkpoint not published: %s", job_id, e)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


class Reporter:
    """The search's progress callback: writes the job's progress (throttled), loss points and
    previews, as long as this worker still holds the lease, and publishes checkpoints."""

    def __init__(self, store: JobStore, lease: Lease, publish: CheckpointPublisher | None = None,
                 phases: PhaseBeat | None = None):
        self.store, self.lease, self.publish, self.phases = store, lease, publish, phases
        self.events = JobEvents(store.r)
        self.iteration, self._last, self._first = 0, 0.0, True
        self._rate_t, self._rate_i = time.monotonic(), 0

    def __call__(self, p: Progress) -> None:
        # iterations run in this process (a resumed search's first step counts one)
        metrics.ITERATIONS.inc(max(0, p.iteration - self.iteration) if self.iteration else 1)
        self.iteration = p.iteration
        if self.publish is not None:
            self.publish(p.iteration)
        fields: dict = {}
        if self._first:
            self._first = False
            if self.phases is not None:
                self.phases.stop()
            fields["phase"] = "searching"
            self._rate_t, self._rate_i = time.monotonic(), p.iteration
            if p.iteration > 1:  # the loop starts at the checkpoint's iteration + 1
                fields["resumed_from"] = p.iteration - 1
                log.info("job %s resumed from its checkpoint at iteration %d", self.lease.job_id,
                         p.iteration - 1)
        now = time.monotonic()
        if not (fields or p.preview_png or p.iteration >= p.iterations
                or now - self._last >= PROGRESS_EVERY_S):
            return
        self._last = now
        if now > self._rate_t:
            metrics.ITERATIONS_PER_S.set((p.iteration - self._rate_i) / (now - self._rate_t))
        loss = p.loss if math.isfinite(p.loss) else None
        fields.update(iteration=p.iteration, iterations=p.iterations,
                      progress=p.iteration / max(1, p.iterations), loss=loss, lr=p.lr,
                      eta_s=round(p.eta_s, 1), keep=p.keep, heartbeat=time.time())
        if p.preview_png:
            fields["preview_iteration"] = p.iteration
        try:
            if not self.store.update(self.lease, fields, point=(p.iteration, loss),
                                     preview=p.preview_png):
                # not ours just now: the heartbeat finds out whether the lease is lost or was
                # only away with the store (and takes it back), the stop check whether the job
                # ended elsewhere
                log.debug("job %s: progress refused", self.lease.job_id)
                return
        except redis.RedisError as e:  # progress is best effort; the lease decides ownership
            log.warning("job %s: progress not written: %s", self.lease.job_id, e)
            return
        # the live events (GET /jobs/{id}/events), after the record took the write
        if "phase" in fields:
            self.events.try_append(self.lease.job_id, PHASE, {"phase": fields["phase"]})
        self.events.try_append(self.lease.job_id, PROGRESS, progress_event(fields))


class StopCheck:
    """The search's cancel callable, asked every iteration; `reason` says why it stopped."""

    def __init__(self, store: JobStore, lease: Lease, deadline: float):
        self.store, self.lease, self.deadline = store, lease, deadline
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.lease.suspended.is_set():
            # the store is away and the lease may have run out: no step until the heartbeat
            # has it back (or finds it lost), so two workers never run one job
            log.warning("job %s: waiting for the shared store before the next step", self.lease.job_id)
            while self.lease.suspended.is_set() and not STOP.is_set():
                STOP.wait(0.2)
        if STOP.is_set():
            self.reason = "shutdown"
        elif self.lease.lost.is_set():
            self.reason = "lost"
        elif time.time() > self.deadline:
            self.reason = "time"
        else:
            try:
                status, cancel = self.store.control(self.lease.job_id)
            except redis.RedisError as e:
                log.warning("job %s: cannot read its cancel flag: %s", self.lease.job_id, e)
                return False
            if cancel:
                self.reason = "cancel"
            elif status != RUNNING:
                self.reason = "lost"
        return self.reason is not None


class StoppableDataset:
    """The dataset as a search sees it: between batches of the real-statistics pass (minutes
    on a large dataset, before the first iteration) it asks the stop check too, so a cancel or
    a worker shutdown is honoured there as well."""

    def __init__(self, dataset: ImageDataset, stop: StopCheck):
        self._dataset, self._stop = dataset, stop
        self._touched = time.monotonic()

    def __getattr__(self, name: str):
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return len(self._dataset)

    def batches(self, *args, **kwargs):
        for batch in self._dataset.batches(*args, **kwargs):
            if self._stop():
                raise SearchCancelled("stopped during the real-statistics pass")
            if time.monotonic() - self._touched > PROGRESS_EVERY_S * 10:
                self._touched = time.monotonic()  # progress, though no iteration yet: not stalled
                try:
                    self._stop.store.touch(self._stop.lease)
                except redis.RedisError as e:
                    log.warning("job %s: heartbeat not written: %s", self._stop.lease.job_id, e)
            yield batch


class PhaseBeat:
    """Before its first iteration a job fetches and unpacks its dataset, hashes it, fetches a
    checkpoint, loads the extractor: minutes on a large folder. A thread writes the job's
    `phase` and heartbeat every PHASE_BEAT_S meanwhile, so the watchdog never takes a healthy
    first search for a stalled one; the first iteration ends it."""

    def __init__(self, store: JobStore, lease: Lease):
        self.store, self.lease = store, lease
        self.phase = "starting"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"phase-{lease.job_id[:8]}")

    def __enter__(self) -> PhaseBeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def enter(self, phase: str) -> None:
        self.phase = phase
        log.info("job %s: %s", self.lease.job_id, phase)
        try:  # written now, not at the next beat, so a follower sees the phase change at once
            if self.store.touch(self.lease, phase):
                JobEvents(self.store.r).try_append(self.lease.job_id, PHASE, {"phase": phase})
        except redis.RedisError as e:
            log.warning("job %s: phase not written: %s", self.lease.job_id, e)

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.store.touch(self.lease, self.phase)
            except redis.RedisError as e:  # the lease decides ownership; this is information
                log.warning("job %s: phase not written: %s", self.lease.job_id, e)
            if self._done.wait(PHASE_BEAT_S):
                return


class SearchRun:
    """One delivery of a job's message."""

    def __init__(self, ctx: Context, job_id: str):
        self.ctx, self.job_id = ctx, job_id
        self.job_dir = ctx.settings.jobs_dir / job_id
        self.searched: dict = {}  # this attempt's search: seconds and device (for the model card)

    def __call__(self) -> str:
        store, job_id = self.ctx.store, self.job_id
        job = store.get(job_id)
        if job is None:
            log.warning("job %s has no record; its message is dropped", job_id)
            return "missing"
        if next_status(job["status"], Event.START) is None:
            log.info("job %s is already %s; its message is dropped", job_id, job["status"])
            return job["status"]
        lease = store.lease(job_id, self.ctx.owner, self.ctx.settings.lease_s)
        if not lease.acquire():
            log.info("job %s runs elsewhere (lease %s); this delivery does nothing", job_id,
                     store.lease_holder(job_id))
            return "leased"
        outcome = Outcome.LOST
        try:
            with lease.heartbeat():
                started = store.start(lease, self.ctx.owner)
                if started != "ok":
                    log.info("job %s not started: %s", job_id, started)
                    return started
                log.info("job %s: %s on %s, attempt %s", job_id, job["domain"], job["dataset"],
                         (job.get("attempts") or 0) + 1)
                outcome = self._run(store.get(job_id), lease)
                return outcome
        finally:
            lease.release()
            log.info("job %s: attempt ends: %s", job_id, outcome)
            # after the release, so the next delivery can take it: a job handed back by a
            # stopping worker goes first, one that failed goes behind jobs that have not
            try:
                if outcome == Outcome.REQUEUED:
                    send_search(self.ctx.app, store, job_id, after="handback")
                elif outcome == Outcome.RETRY:
                    send_search(self.ctx.app, store, job_id, after="failure")
            except Exception as e:  # the watchdog resends a queued job whose message is gone
                log.warning("job %s: message not sent again (%s); the watchdog will", job_id, describe(e))

    def _run(self, job: dict, lease: Lease) -> str:
        stop = StopCheck(self.ctx.store, lease, job["started"] + job["time_limit_s"])
        publisher = CheckpointPublisher(self.ctx, lease, self.job_dir / "checkpoint.pt")
        with PhaseBeat(self.ctx.store, lease) as phases:
            reporter = Reporter(self.ctx.store, lease, publisher, phases)
            try:
                if job.get("mask_id") and self._stored(job["mask_id"], lease):  # died after the catalog write
                    data = self._with_store("reading its stored mask", lease,
                                            lambda: self.ctx.catalog.bytes(job["mask_id"]))
                else:
                    data = self._search(job, reporter, stop, phases)
            except SearchCancelled:
                publisher.join()
                return self._stopped(job, lease, stop.reason, reporter.iteration)
            except Exception as e:
                publisher.join()
                if lease.lost.is_set():
                    log.warning("job %s: %s after its lease was lost; left to its new owner", self.job_id, e)
                    return Outcome.LOST
                if transient(e):  # the store stayed away past SLT_STORE_RETRY_S: one failure
                    log.warning("job %s: the shared store stayed unavailable (%s); handed back",
                                self.job_id, describe(e))
                    return self._retry(job, lease, e, reporter.iteration)
                log.exception("job %s failed", self.job_id)
                return self._end(lease, FAILED, error=self.ctx.public_error(e), finished=time.time())
        publisher.join()
        try:
            return self._with_store("storing its mask", lease, lambda: self._succeed(job, lease, data))
        except Exception as e:  # outside the search (the catalog's disk, the store): may pass on a retry
            log.exception("job %s: the search finished but storing its mask failed", self.job_id)
            return self._retry(job, lease, e, reporter.iteration)

    def _stored(self, mask_id: str, lease: Lease) -> bool:
        return self._with_store("looking up its mask", lease, lambda: mask_id in self.ctx.catalog)

    def _with_store(self, what: str, lease: Lease, step):
        """`step()`, retried with backoff while it meets a transient fault of the shared store
        (Redis away, an S3 5xx), for up to SLT_STORE_RETRY_S; then, or for any other error,
        the error is raised. Steps given here are idempotent."""
        delay, waited = RETRY_FIRST_S, 0.0
        while True:
            try:
                return step()
            except Exception as e:
                if not transient(e) or lease.lost.is_set() or STOP.is_set() \
                        or waited >= self.ctx.settings.store_retry_s:
                    raise
                log.warning("job %s: %s: %s; retrying in %.0f s", self.job_id, what, describe(e), delay)
                try:
                    self.ctx.store.update(lease, {"note": f"waiting for the shared store while {what} "
                                                          f"({describe(e)[:200]})"})
                except redis.RedisError:
                    pass
                if STOP.wait(delay):
                    raise
                waited += delay
                delay = min(2 * delay, RETRY_MAX_S)

    def _end(self, lease: Lease, status: str, **fields) -> str:
        """End the run as `status` by its lease holder. Only a holder that really ended the job
        removes its checkpoints; one fenced out (its lease gone) leaves them to the new owner."""
        if not self.ctx.store.finish(lease, status, **fields):
            log.warning("job %s: not ended %s: its lease is gone (taken over?)", self.job_id, status)
            return Outcome.LOST
        metrics.JOBS.labels(status).inc()
        self._clean()
        return status

    def _retry(self, job: dict, lease: Lease, e: BaseException, iteration: int) -> str:
        """Hand the job back after an error outside the search, one failure counted; at
        SLT_MAX_ATTEMPTS it ends failed with the error."""
        error = self.ctx.public_error(e) if not transient(e) else describe(e)
        try:
            failures = (self.ctx.store.get(self.job_id) or job).get("failures", 0) + 1
            outcome = self.ctx.store.requeue_running(
                self.job_id, f"attempt failed at iteration {iteration} ({error[:200]}); retried",
                max_failures=self.ctx.settings.max_attempts, kind="handback", token=lease.token,
                error=f"failed {failures} times; last error: {error}")
        except redis.RedisError as re:
            log.warning("job %s: cannot hand it back (%s); the watchdog will", self.job_id, describe(re))
            return Outcome.STORE_DOWN
        if outcome == FAILED:
            metrics.JOBS.labels(FAILED).inc()
            self._clean()
        return Outcome.RETRY if outcome == Outcome.REQUEUED else outcome

    def _search(self, job: dict, reporter: Reporter, stop: StopCheck, phases: PhaseBeat) -> bytes:
        lease = stop.lease
        phases.enter(f"opening dataset {job['dataset']} (fetched and hashed the first time)")
        ds = StoppableDataset(self._with_store("fetching its dataset", lease,
                                               lambda: self.ctx.open_dataset(job["dataset"])), stop)
        ckpt = self.job_dir / "checkpoint.pt"
        if not ckpt.exists():  # taken over from another host: resume from its published checkpoint
            phases.enter("fetching its published checkpoint")
            it = self._with_store("fetching its checkpoint", lease,
                                  lambda: self.ctx.checkpoints.fetch(self.job_id, ckpt))
            if it is not None:
                log.info("job %s: published checkpoint (iteration %d) fetched", self.job_id, it)
                metrics.TAKEOVERS.inc()
        prefix = ds.dataset_sha256[:16]
        phases.enter("fetching feature statistics")
        self._sync_moments("pull", prefix)
        phases.enter("loading the feature extractor and real statistics")
        cfg = config_from_record(job["config"])
        device = self.ctx.device
        res = search(BaseSpec.from_dict(job["base"]), cfg, ds, domain=job["domain"],
                     device=device, progress=reporter, cancel=stop,
                     checkpoint=ckpt, resume=True, cache_dir=self.ctx.settings.cache_dir)
        self.searched = {"search_seconds": round(res.seconds, 3), "device": device_name(device)}
        self._sync_moments("push", prefix)
        log.info("job %s: search done in %.1f s, final loss %.5g", self.job_id, res.seconds, res.final_loss)
        return res.data

    def _sync_moments(self, way: str, prefix: str) -> None:
        try:
            getattr(self.ctx.moments, way)(self.ctx.moments_dir(), prefix)
        except Exception as e:  # computed locally instead
            if not (transient(e) or isinstance(e, OSError)):
                raise
            log.warning("feature statistics not %sed: %s", way, describe(e))

    def _stopped(self, job: dict, lease: Lease, reason: str | None, iteration: int) -> str:
        now = time.time()
        if reason == "cancel":
            log.info("job %s cancelled at iteration %d", self.job_id, iteration)
            return self._end(lease, CANCELLED, finished=now, note=f"cancelled at iteration {iteration}")
        if reason == "time":
            log.warning("job %s failed: past its time limit at iteration %d", self.job_id, iteration)
            return self._end(lease, FAILED, finished=now,
                             error=f"time limit: still running after {job['time_limit_s']:g} s "
                                   f"(SLT_JOB_TIME_LIMIT_S); stopped at iteration {iteration}")
        if reason == "shutdown":
            try:
                ok = self.ctx.store.finish(lease, QUEUED, note=f"its worker stopped at iteration "
                                                               f"{iteration}; it resumes from its last checkpoint")
            except redis.RedisError as e:
                log.warning("job %s: not handed back (%s); the watchdog will", self.job_id, describe(e))
                return Outcome.STORE_DOWN
            if ok:
                log.info("job %s handed back at iteration %d (the worker is stopping)", self.job_id, iteration)
            return Outcome.REQUEUED if ok else Outcome.LOST
        log.warning("job %s: no longer ours (lease lost or status changed); stopped", self.job_id)
        return Outcome.LOST

    def _succeed(self, job: dict, lease: Lease, data: bytes) -> str:
        """Idempotent (retried after a store fault): publish, record, promote, finish."""
        ctx = self.ctx
        # verified; this host's file, the blob and the shared index entry; idempotent
        mask_id, _ = ctx.catalog.publish(data)
        ctx.catalog.record_provenance(mask_id, self._provenance(job))  # what its model card says
        # recorded before anything else, so a crash from here on finishes these steps again
        # instead of searching again
        if not ctx.store.update(lease, {"mask_id": mask_id}):
            return self._finished_elsewhere(mask_id)
        if job["promote"]:
            # fenced: only while this worker holds the job's lease, and only a live, indexed mask
            try:
                ctx.domains.promote(job["domain"], mask_id, by=f"job:{self.job_id}",
                                    guard=self._promotion_guard(lease, mask_id))
            except LeaseLost:
                return self._finished_elsewhere(mask_id)
        if not ctx.store.finish(lease, SUCCEEDED, mask_id=mask_id, progress=1.0, eta_s=0.0,
                                finished=time.time()):
            return self._finished_elsewhere(mask_id)
        metrics.JOBS.labels(SUCCEEDED).inc()
        log.info("job %s succeeded: mask %s%s", self.job_id, mask_id[:12],
                 f", promoted to {job['domain']}" if job["promote"] else "")
        self._clean()
        if ctx.settings.eval_n and importlib.util.find_spec("trainer.evaluate") is not None:
            ctx.app.send_task(EVALUATE_TASK, args=[mask_id, job["dataset"]], queue=QUEUE,
                              priority=LOW_PRIORITY)
        return SUCCEEDED

    def _provenance(self, job: dict) -> dict:
        """How this job made its mask: what the file does not say (the dataset's name, the
        request, where and how long it searched)."""
        return {"job_id": self.job_id, "domain": job["domain"], "dataset": job["dataset"],
                "preset": job.get("preset"), "config": job["config"], "promote": job["promote"],
                "attempts": job.get("attempts"), "finished": time.time(), **self.searched}

    def _promotion_guard(self, lease: Lease, mask_id: str):
        """The catalog's guard (the mask is live and indexed) plus the job's lease token, checked
        inside the registry's transaction: a worker that lost its lease promotes nothing."""
        keys, live = self.ctx.catalog.promotion_guard(mask_id)

        def check(pipe) -> None:
            live(pipe)
            if pipe.get(lease.key) != lease.token.encode():
                raise LeaseLost(f"job {self.job_id}: lease lost before the promotion")
        return [*keys, lease.key], check

    def _finished_elsewhere(self, mask_id: str) -> str:
        """A write refused: the lease is gone, or an earlier try of this step did finish (its
        answer lost in a store fault)."""
        rec = self.ctx.store.get(self.job_id) or {}
        if rec.get("status") == SUCCEEDED and rec.get("mask_id") == mask_id:
            self._clean()
            return SUCCEEDED
        return Outcome.LOST

    def _clean(self) -> None:
        shutil.rmtree(self.job_dir, ignore_errors=True)
        try:
            self.ctx.checkpoints.drop(self.job_id)
        except Exception as e:  # retention drops it later
            log.warning("job %s: published checkpoint not dropped: %s", self.job_id, describe(e))


def dataset_stats(ctx: Context, dataset: str, features: str) -> dict:
    """Real feature moments of a dataset, computed once into the cache that searches read."""
    from trainer.features import load_extractor
    from trainer.stats import real_moments

    ds = ctx.open_dataset(dataset)
    prefix = ds.dataset_sha256[:16]
    ctx.moments.pull(ctx.moments_dir(), prefix)
    extractor = load_extractor(features, ctx.device)
    m = real_moments(ds, extractor, device=ctx.device, cache_dir=ctx.settings.cache_dir)
    ctx.moments.push(ctx.moments_dir(), prefix)
    return {"dataset": dataset, "images": len(ds), "skipped": ds.skipped,
            "dataset_sha256": ds.dataset_sha256, "features": extractor.name, "n": m.n}


def evaluate(ctx: Context, mask_id: str, dataset: str) -> dict | None:
    """Metrics of a finished mask on the dataset's held-out split, recorded beside it in the
    catalog as `{"heldout": {...}}` (the sidecar format of `python -m trainer evaluate
    --record`). Optional: without `trainer.evaluate`, or when it fails, the mask simply has
    no metrics."""
    try:
        from trainer.evaluate import evaluate_mask
    except ImportError:
        log.info("trainer.evaluate is not available; mask %s gets no metrics", mask_id[:12])
        return None
    try:
        result = evaluate_mask(ctx.catalog.read(mask_id), ctx.open_dataset(dataset),
                                n=ctx.settings.eval_n, device=ctx.device)
    except Exception as e:  # evaluation is extra information, never a reason to fail a job
        log.warning("evaluation of mask %s failed: %s; no metrics recorded", mask_id[:12], e)
        return None
    # keyed by split, as `python -m trainer evaluate --record` writes it (one sidecar format)
    result["evaluated"] = time.time()  # when: the model card says so
    ctx.catalog.record_evaluation(mask_id, {result["split"]: result})
    log.info("mask %s evaluated on %s: %s", mask_id[:12], result["split"], result)
    return result
