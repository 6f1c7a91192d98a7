"""Job records in Redis, and the lease that lets exactly one worker run a job at a time.

A job is a hash `slt:job:<id>` (each field JSON), listed in `slt:jobs` (by creation time)
and, until it ends, in `slt:jobs:active` (what the watchdog sweeps). Its recent loss points
and latest preview live beside it. Every change of status is one Lua script that goes through
the transition table of store/lifecycle.py, so the API's cancel, a worker's start and finish
and the watchdog's take-over never interleave and never disagree with the table.

The lease `slt:job:<id>:lease` holds the running worker's token with a TTL (SLT_LEASE_S),
renewed by a heartbeat thread over a connection whose timeout is a fraction of the lease, so
a hung Redis never makes a renewal land after the lease ran out. A worker writes progress or a
result only while it holds the lease; a redelivered message for a job whose lease is alive
does nothing; a lease that expired means the worker died, and the job is taken over and
resumed from its checkpoint. A lease that expired while the store itself was away (the holder
saw every renewal fail) is taken back by its holder when the store returns, if no one else
took the job meanwhile (`reclaim`), so the search goes on where it was.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from store.lifecycle import (
    ACTIVE,
    ALL,
    FINISH_EVENTS,
    FINISHED,
    INDEXED,
    LUA_TRANSITION,
    PARTS,
    TERMINAL,
    Event,
    Outcome,
    Status,
    job_key,
    lease_key,
    status_index,
)
from store.outages import OutageLog

log = logging.getLogger(__name__)

# the statuses as plain names, for callers that compare with a record's field
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED,
                                                 Status.FAILED, Status.CANCELLED)
STATUSES = tuple(s.value for s in Status)
LOSS_POINTS = 500  # recent (iteration, loss) points kept per job

_FINISH_EVENTS_LUA = "{" + ", ".join(f'["{st.value}"] = "{ev.value}"'
                                     for st, ev in FINISH_EVENTS.items()) + "}"

# KEYS: job, lease. ARGV: token, now, worker, job id. Takes the job (queued, or running under a
# lease that expired) for the lease holder.
_START = LUA_TRANSITION + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end
local to, why = transition(KEYS[1], ARGV[4], 'start', ARGV[2])
if not to then return why end
redis.call('HSET', KEYS[1], 'worker', ARGV[3], 'note', 'null', 'heartbeat', ARGV[2],
           'lease_token', cjson.encode(ARGV[1]), 'phase', 'null')
if redis.call('HGET', KEYS[1], 'started') == 'null' then
  redis.call('HSET', KEYS[1], 'started', ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'ok'
"""
# KEYS: job, lease. ARGV: token, now, job id, lease ms. The holder whose lease expired while it
# could not reach the store takes it back, if the job still runs under its token.
_RECLAIM = LUA_TRANSITION + """
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[1] then return 'ok' end
if cur then return 'lost' end
local tok = redis.call('HGET', KEYS[1], 'lease_token')
if not tok or cjson.decode(tok) ~= ARGV[1] then return 'lost' end
local to, why = transition(KEYS[1], ARGV[3], 'reclaim', ARGV[2])
if not to then return why end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'heartbeat', ARGV[2])
return 'ok'
"""
# KEYS: job, lease, losses, preview. ARGV: token, loss point or '', png or '', max points,
# iteration or '', now, decay seconds, field, value, ... Progress of the lease holder of a
# running job. Real progress (an iteration past the one where the last failure happened, at
# least `decay` seconds after it) clears the failures: blips over a long job never add up to
# its end, while a crash that repeats at one place, or soon after every start, still does.
_UPDATE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if ARGV[5] ~= '' then
  local failures = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
  local at = tonumber(redis.call('HGET', KEYS[1], 'failed_at')) or -1
  local when = tonumber(redis.call('HGET', KEYS[1], 'failed_time')) or 0
  if failures > 0 and tonumber(ARGV[5]) > at and tonumber(ARGV[6]) - when >= tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'failures', 0, 'failures_cleared', ARGV[5])
  end
end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[3]) end
return 1
"""
# KEYS: job, lease. ARGV: token, new status (plain), job id, now, field, value, ...
_FINISH = LUA_TRANSITION + "local FINISH_EVENTS = " + _FINISH_EVENTS_LUA + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local event = FINISH_EVENTS[ARGV[2]]
if not event then return 0 end
if not transition(KEYS[1], ARGV[3], event, ARGV[4]) then return 0 end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
return 1
"""
# KEYS: job. ARGV: now, job id.
_CANCEL = LUA_TRANSITION + """
local to, why = transition(KEYS[1], ARGV[2], 'cancel', ARGV[1])
if not to then
  if why == 'missing' then return 'missing' end
  return 'finished'
end
redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
if to == 'cancelled' then
  redis.call('HSET', KEYS[1], 'finished', ARGV[1], 'note', '"cancelled while queued"')
  return 'cancelled'
end
return 'cancelling'
"""
# KEYS: job, lease. ARGV: now, note, job id, max failures, error if it fails now, kind
# ('lost': no live lease; 'stalled': a live lease but no progress since ARGV[7]; 'handback':
# the lease holder, token ARGV[7], gives it back after an error), count ('1': one failure is
# counted; '0': none, the store itself was at fault). A running job goes back to queued, or
# ends `failed` with the error at the cap, or `cancelled` if a cancel was asked.
_REQUEUE = LUA_TRANSITION + """
local kind = ARGV[6]
if kind == 'lost' and redis.call('EXISTS', KEYS[2]) == 1 then return 'leased' end
if kind == 'handback' and redis.call('GET', KEYS[2]) ~= ARGV[7] then return 'lost' end
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then
  redis.call('SREM', '""" + ACTIVE + """', ARGV[3])
  return 'missing'
end
if raw == '"queued"' then return 'queued' end
if raw ~= '"running"' then return 'finished' end
if kind == 'stalled' then
  local hb = tonumber(redis.call('HGET', KEYS[1], 'heartbeat')) or tonumber(redis.call('HGET', KEYS[1], 'started')) or 0
  if hb > tonumber(ARGV[7]) then return 'progressing' end
end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'cancel_requested') == 'true' then
  transition(KEYS[1], ARGV[3], 'abandon', ARGV[1])
  redis.call('HSET', KEYS[1], 'finished', ARGV[1], 'note', '"cancelled; its worker had stopped"')
  return 'cancelled'
end
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
if ARGV[8] == '1' then
  failures = failures + 1
  redis.call('HSET', KEYS[1], 'failures', failures, 'failed_time', ARGV[1],
             'failed_at', redis.call('HGET', KEYS[1], 'iteration') or '0')
end
if failures >= tonumber(ARGV[4]) then
  transition(KEYS[1], ARGV[3], 'give_up', ARGV[1])
  redis.call('HSET', KEYS[1], 'error', ARGV[5], 'finished', ARGV[1], 'note', ARGV[2])
  return 'failed'
end
transition(KEYS[1], ARGV[3], ARGV[8] == '1' and 'retry' or 'hand_back', ARGV[1])
redis.call('HSET', KEYS[1], 'note', ARGV[2], 'enqueued', ARGV[1], 'phase', 'null')
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
return 'requeued'
"""
# KEYS: job. ARGV: now, error, job id. A running job past its time limit whose worker does
# not stop it.
_EXPIRE = LUA_TRANSITION + """
if not transition(KEYS[1], ARGV[3], 'expire', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[2], 'finished', ARGV[1])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the job's record and every key beside it (ARGV[2] of them), then ACTIVE (a set) and
# the sorted sets ALL, FINISHED and the status indexes. ARGV: job id, keys to delete. Retention:
# a finished job goes entirely; one still active is left alone.
_DELETE = """
local raw = redis.call('HGET', KEYS[1], 'status')
if raw and raw ~= '"succeeded"' and raw ~= '"failed"' and raw ~= '"cancelled"' then return 0 end
local n = tonumber(ARGV[2])
for i = 1, n do redis.call('DEL', KEYS[i]) end
redis.call('SREM', KEYS[n + 1], ARGV[1])
for i = n + 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def client_with_timeout(client: redis.Redis, seconds: float) -> redis.Redis:
    """A client to the same server whose calls give up after `seconds` (its own pool), and do
    not retry: redis-py retries a failed call three times with backoff by default, which would
    make one call last several times `seconds`. Its caller retries on its own schedule."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(socket_timeout=seconds, socket_connect_timeout=min(seconds, kwargs.get(
        "socket_connect_timeout") or seconds), retry=Retry(NoBackoff(), 0))
    pool = redis.ConnectionPool(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


class JobStore:
    """Job records, their progress and their leases, in one Redis."""

    def __init__(self, client: redis.Redis, failure_decay_s: float = 3600.0):
        self.r, self.failure_decay_s = client, failure_decay_s
        self._start, self._update, self._finish, self._cancel, self._requeue, self._expire, \
            self._delete = (client.register_script(s) for s in (
                _START, _UPDATE, _FINISH, _CANCEL, _REQUEUE, _EXPIRE, _DELETE))

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return job_key(job_id, part)

    # ---- records ------------------------------------------------------------------------
    def create(self, *, domain: str, dataset: str, preset: str | None, config: dict, base: dict,
               promote: bool, time_limit_s: float) -> dict:
        job_id, now = uuid.uuid4().hex, time.time()
        job = dict(job_id=job_id, domain=domain, dataset=dataset, preset=preset, config=config,
                   base=base, promote=promote, time_limit_s=time_limit_s, status=Status.QUEUED,
                   progress=0.0, iteration=0, iterations=config["iterations"], loss=None, lr=None,
                   eta_s=None, keep=None, mask_id=None, error=None, note=None, phase=None,
                   created=now, enqueued=now, started=None, finished=None, heartbeat=None,
                   attempts=0, failures=0, failed_at=None, failed_time=None, requeues=0, resumed_from=None,
                   preview_iteration=None, worker=None, lease_token=None,
                   cancel_requested=False, checkpoint_iteration=None)
        with self.r.pipeline() as p:
            p.hset(self.key(job_id), mapping={k: json.dumps(v) for k, v in job.items()})
            p.zadd(ALL, {job_id: now})
            p.zadd(status_index(Status.QUEUED), {job_id: now})
            p.sadd(ACTIVE, job_id)
            p.execute()
        return job

    def ensure_indexes(self) -> int:
        """Build the status indexes once for records written before they existed; returns the
        jobs indexed (0 when already done)."""
        if self.r.exists(INDEXED):
            return 0
        n = 0
        for job_id in (i.decode() for i in self.r.zrange(ALL, 0, -1)):
            job = self.get(job_id)
            if job is None:
                continue
            with self.r.pipeline() as p:
                for st in Status:
                    p.zrem(status_index(st), job_id)
                p.zadd(status_index(job["status"]), {job_id: job.get("created") or 0})
                if job["status"] in TERMINAL:
                    p.zadd(FINISHED, {job_id: job.get("finished") or job.get("created") or 0}, nx=True)
                p.execute()
            n += 1
        self.r.set(INDEXED, "1")
        return n

    @staticmethod
    def _decode(raw: dict) -> dict | None:
        return {k.decode(): json.loads(v) for k, v in raw.items()} if raw else None

    def get(self, job_id: str) -> dict | None:
        return self._decode(self.r.hgetall(self.key(job_id)))

    def list(self, status: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first, at most `limit`, optionally of one status (read from its index)."""
        index = ALL if status is None else status_index(status)
        ids = [i.decode() for i in self.r.zrevrange(index, 0, limit - 1)]
        with self.r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hgetall(self.key(job_id))
            jobs = [self._decode(raw) for raw in p.execute()]
        return [j for j in jobs if j and (status is None or j["status"] == status)]

    def counts(self) -> dict[str, int]:
        """Jobs by status, from the indexes (one ZCARD each)."""
        with self.r.pipeline(transaction=False) as p:
            for st in Status:
                p.zcard(status_index(st))
            return dict(zip(STATUSES, (int(n) for n in p.execute())))

    def losses(self, job_id: str) -> list[list]:
        return [json.loads(x) for x in self.r.lrange(self.key(job_id, "losses"), 0, -1)]

    def preview(self, job_id: str) -> bytes | None:
        return self.r.get(self.key(job_id, "preview"))

    def active_ids(self) -> list[str]:
        return sorted(i.decode() for i in self.r.smembers(ACTIVE))

    def set_fields(self, job_id: str, **fields) -> None:
        """Fields that are not progress of a run (enqueue bookkeeping), on an existing record."""
        if self.r.exists(self.key(job_id)):
            self.r.hset(self.key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def control(self, job_id: str) -> tuple[str | None, bool]:
        """(status, cancel requested): what a running search checks every iteration."""
        st, cancel = self.r.hmget(self.key(job_id), "status", "cancel_requested")
        return (json.loads(st) if st else None), bool(cancel and json.loads(cancel))

    # ---- status changes (each an event of store.lifecycle.TRANSITIONS) -------------------
    def request_cancel(self, job_id: str) -> str:
        """'cancelled' (it was queued), 'cancelling' (its worker stops at the next iteration),
        'finished' (too late: it already ended) or 'missing'."""
        return self._str(self._cancel(keys=[self.key(job_id)], args=[time.time(), job_id]))

    def start(self, lease: Lease, worker: str) -> str:
        """'ok' when the lease holder now runs the job, else why not (its status, 'lost', 'missing')."""
        return self._str(self._start(keys=[self.key(lease.job_id), lease.key],
                                     args=[lease.token, time.time(), json.dumps(worker), lease.job_id]))

    def update(self, lease: Lease, fields: dict, point: tuple[int, float | None] | None = None,
               preview: bytes | None = None) -> bool:
        """Progress of a running job, written only by its lease holder; False if it is not. An
        `iteration` past the one of the job's last failure, `failure_decay_s` after it, clears
        its failures."""
        flat = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        pt = json.dumps([point[0], _finite(point[1])]) if point else ""
        it = str(int(fields["iteration"])) if fields.get("iteration") is not None else ""
        job_id = lease.job_id
        return bool(self._update(keys=[self.key(job_id), lease.key, self.key(job_id, "losses"),
                                       self.key(job_id, "preview")],
                                 args=[lease.token, pt, preview or b"", LOSS_POINTS, it, time.time(),
                                       self.failure_decay_s, *flat]))

    def touch(self, lease: Lease, phase: str | None = None) -> bool:
        """Progress without a new iteration (fetching, hashing, the real-statistics pass): the
        job is not stalled; `phase` says what it does."""
        fields: dict = {"heartbeat": time.time()}
        if phase is not None:
            fields["phase"] = phase
        return self.update(lease, fields)

    def finish(self, lease: Lease, status: str, **fields) -> bool:
        """running -> `status` (a terminal one, or queued to hand the job back) by the lease
        holder; False (nothing written) if it no longer holds the lease or the table refuses."""
        flat = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._finish(keys=[self.key(lease.job_id), lease.key],
                                 args=[lease.token, str(status), lease.job_id, time.time(), *flat]))

    def requeue_running(self, job_id: str, note: str, *, max_failures: int = 1 << 30,
                        error: str = "", kind: str = "lost", since: float = 0.0,
                        token: str = "", count: bool = True) -> str:
        """A running job that failed goes back to queued ('requeued'), one more failure
        counted (none when `count` is False: the store itself was at fault); at
        `max_failures` it ends 'failed' with `error`; 'cancelled' if a cancel was asked.
        `kind`: 'lost' (no live lease, else 'leased'), 'stalled' (no progress since `since`,
        else 'progressing'; its lease is revoked) or 'handback' (by the holder of lease
        `token`, else 'lost'). Otherwise 'queued' (already), 'finished' (it ended) or
        'missing'."""
        return self._str(self._requeue(
            keys=[self.key(job_id), self.key(job_id, "lease")],
            args=[time.time(), json.dumps(note), job_id, max_failures, json.dumps(error), kind,
                  token if kind == "handback" else since, "1" if count else "0"]))

    def expire_running(self, job_id: str, error: str) -> bool:
        return bool(self._expire(keys=[self.key(job_id)], args=[time.time(), json.dumps(error), job_id]))

    def claim_resend(self, job_id: str, ttl_s: float) -> bool:
        """True for the one caller (of many watchdogs) that may send a job's message again now."""
        return bool(self.r.set(self.key(job_id, "resend"), "1", nx=True, px=max(1, int(ttl_s * 1000))))

    # ---- retention ------------------------------------------------------------------------
    def expired(self, retention_s: float, now: float | None = None, limit: int = 500) -> list[str]:
        """Finished jobs past retention, still recorded."""
        cutoff = (now or time.time()) - retention_s
        return [i.decode() for i in self.r.zrangebyscore(FINISHED, "-inf", cutoff, start=0, num=limit)]

    def delete(self, job_id: str) -> bool:
        """A finished job's record, previews, curve and index entries, all gone (retention);
        False, and nothing deleted, for a job that is still queued or running."""
        parts = [self.key(job_id), *(self.key(job_id, p) for p in PARTS)]
        keys = [*parts, ACTIVE, ALL, FINISHED, *(status_index(s) for s in Status)]
        return bool(self._delete(keys=keys, args=[job_id, len(parts)]))

    # ---- leases ---------------------------------------------------------------------------
    def lease(self, job_id: str, owner: str, ttl_s: float, outages: OutageLog | None = None) -> Lease:
        return Lease(self, job_id, owner, ttl_s, outages)

    def lease_holder(self, job_id: str) -> str | None:
        raw = self.r.get(self.key(job_id, "lease"))
        return raw.decode() if raw else None

    @staticmethod
    def _str(x) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)


class LeaseLost(Exception):
    """A write of a job refused because its writer no longer holds the job's lease (fenced)."""


class Lease:
    """A job's lease: a token in Redis with a TTL, renewed by a heartbeat thread while held.

    Its calls go over a connection that gives up after a quarter of the TTL, so a renewal that
    hangs is retried instead of landing after the lease ran out. While the store does not
    answer, `suspended` is set (the search waits at its next iteration); when the store is
    back, an expired lease is taken back (`reclaim`) if nobody took the job meanwhile, else
    `lost` is set and this run stops.
    """

    def __init__(self, store: JobStore, job_id: str, owner: str, ttl_s: float,
                 outages: OutageLog | None = None):
        self.store, self.job_id, self.ttl_s = store, job_id, ttl_s
        self.key = lease_key(job_id)
        self.token = f"{owner}/{uuid.uuid4().hex[:8]}"
        self.r = client_with_timeout(store.r, max(0.05, ttl_s / 4))
        self.outages = outages or OutageLog(self.r, min_s=ttl_s / 2)
        self._renew, self._release, self._reclaim = (self.r.register_script(s) for s in (
            _RENEW, _RELEASE, _RECLAIM))
        self.lost = threading.Event()  # the lease is someone else's now: this run stops
        self.suspended = threading.Event()  # the store is away and the lease may have run out

    @property
    def _ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def acquire(self) -> bool:
        return bool(self.r.set(self.key, self.token, nx=True, px=self._ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.token, self._ms]))

    def reclaim(self) -> str:
        """'ok' if this holder has the lease again (or never lost it), else why not."""
        return JobStore._str(self._reclaim(keys=[job_key(self.job_id), self.key],
                                           args=[self.token, time.time(), self.job_id, self._ms]))

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError as e:  # it expires by itself
            log.warning("could not release the lease of job %s: %s", self.job_id, e)
        finally:
            self.r.close()

    @contextmanager
    def heartbeat(self) -> Iterator[Lease]:
        """Renew the lease every ttl/3 in a background thread for the duration of the block."""
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(stop,), daemon=True,
                                  name=f"lease-{self.job_id[:8]}")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def _beat(self, stop: threading.Event) -> None:
        last_ok = time.monotonic()
        while not stop.wait(self.ttl_s / 3):
            try:
                renewed = self.outages.timed(self.renew)
            except redis.RedisError as e:
                # the store is away: the lease counts down there (or already ran out). Wait for
                # the store rather than give up, and keep the search still once the lease may
                # have expired, since a watchdog may hand the job to someone else then
                self.outages.failed()
                if time.monotonic() - last_ok > self.ttl_s * 0.9 and not self.suspended.is_set():
                    log.warning("job %s: the store has not answered for %.0f s (%s); the search "
                                "waits for it", self.job_id, time.monotonic() - last_ok, e)
                    self.suspended.set()
                continue
            away = self.outages.away  # the store just came back after this long (0: it never left)
            if renewed:
                last_ok = time.monotonic()
                self.suspended.clear()
                continue
            if away:  # it ran out while the store was unreachable: take it back if still ours
                try:
                    outcome = self.reclaim()
                except redis.RedisError:
                    self.outages.failed()
                    continue
                if outcome == Outcome.OK:
                    log.warning("job %s: lease taken back after a store outage of %.1f s; the "
                                "search goes on", self.job_id, away)
                    last_ok = time.monotonic()
                    self.suspended.clear()
                    continue
                log.error("job %s: lease lost during a store outage (%s); this run stops",
                          self.job_id, outcome)
            else:
                log.error("job %s: lease lost (expired and taken over?); this run stops", self.job_id)
            self.lost.set()
            self.suspended.clear()
            return


__all__ = ["CANCELLED", "FAILED", "QUEUED", "RUNNING", "STATUSES", "SUCCEEDED", "TERMINAL",
           "Event", "JobStore", "Lease", "LeaseLost", "Outcome", "Status", "client_with_timeout"]
