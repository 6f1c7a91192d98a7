"""Job records in Redis, and the lease that lets exactly one worker run a job at a time.

A job is a hash `slt:job:<id>` (each field JSON), listed in `slt:jobs` (by creation time)
and, until it ends, in `slt:jobs:active` (what the watchdog sweeps). Its recent loss points
and latest preview live beside it. Every change of status is one Lua script, so the API's
cancel, a worker's start and finish and the watchdog's take-over never interleave.

The lease `slt:job:<id>:lease` holds the running worker's token with a TTL (SLT_LEASE_S),
renewed by a heartbeat thread. A worker writes progress or a result only while it holds the
lease; a redelivered message for a job whose lease is alive does nothing; a lease that
expired means the worker died, and the job is taken over and resumed from its checkpoint.
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
from dataclasses import asdict

import redis

from store.settings import SharedSettings
from trainer.search import config_from

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
STATUSES = (QUEUED, RUNNING, *TERMINAL)
LOSS_POINTS = 500  # recent (iteration, loss) points kept per job
ALL = "slt:jobs"
ACTIVE = "slt:jobs:active"
FINISHED = "slt:jobs:finished"  # terminal jobs by finish time, until retention trims them
INDEXED = "slt:jobs:indexed"  # set once the status indexes cover every job


def status_index(status: str) -> str:
    """Jobs of one status by creation time: what GET /jobs?status= and /metrics read."""
    return f"slt:jobs:status:{status}"


# Every status change moves the job between the per-status indexes in the same script, so
# the indexes and counts are exact without ever scanning the jobs.
_MOVE = """
local function move(job, id, old, new, now)
  local created = tonumber(redis.call('HGET', job, 'created')) or tonumber(now)
  redis.call('ZREM', 'slt:jobs:status:' .. old, id)
  redis.call('ZADD', 'slt:jobs:status:' .. new, created, id)
  if new == 'succeeded' or new == 'failed' or new == 'cancelled' then
    redis.call('SREM', 'slt:jobs:active', id)
    redis.call('ZADD', 'slt:jobs:finished', tonumber(now), id)
  end
end
"""
# KEYS: job, lease. ARGV: token, now, worker, job id. Takes the job (queued, or running under a
# lease that expired) for the lease holder.
_START = _MOVE + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
st = cjson.decode(st)
if st ~= 'queued' and st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'status', '"running"', 'worker', ARGV[3], 'note', 'null',
           'heartbeat', ARGV[2])
if redis.call('HGET', KEYS[1], 'started') == 'null' then
  redis.call('HSET', KEYS[1], 'started', ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
move(KEYS[1], ARGV[4], st, 'running', ARGV[2])
return 'ok'
"""
# KEYS: job, lease, losses, preview. ARGV: token, loss point or '', png or '', max points,
# field, value, ... Progress of the lease holder of a running job.
_UPDATE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[3]) end
return 1
"""
# KEYS: job, lease. ARGV: token, new status (plain), job id, now, field, value, ...
_FINISH = _MOVE + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[2]), unpack(ARGV, 5))
move(KEYS[1], ARGV[3], 'running', ARGV[2], ARGV[4])
return 1
"""
# KEYS: job. ARGV: now, job id.
_CANCEL = _MOVE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= '"queued"' and st ~= '"running"' then return 'finished' end
redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
if st == '"queued"' then
  redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished', ARGV[1],
             'note', '"cancelled while queued"')
  move(KEYS[1], ARGV[2], 'queued', 'cancelled', ARGV[1])
  return 'cancelled'
end
return 'cancelling'
"""
# KEYS: job, lease. ARGV: now, note, job id, max failures, error if it fails now, kind
# ('lost': no live lease; 'stalled': a live lease but no progress since ARGV[7]; 'handback':
# the lease holder, token ARGV[7], gives it back after an error). A running job goes back to
# queued, counting one failure, or ends `failed` with the error at the cap.
_REQUEUE = _MOVE + """
local kind = ARGV[6]
if kind == 'lost' and redis.call('EXISTS', KEYS[2]) == 1 then return 'leased' end
if kind == 'handback' and redis.call('GET', KEYS[2]) ~= ARGV[7] then return 'lost' end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  redis.call('SREM', 'slt:jobs:active', ARGV[3])
  return 'missing'
end
if st ~= '"running"' then return cjson.decode(st) end
if kind == 'stalled' then
  local hb = tonumber(redis.call('HGET', KEYS[1], 'heartbeat')) or tonumber(redis.call('HGET', KEYS[1], 'started')) or 0
  if hb > tonumber(ARGV[7]) then return 'progressing' end
end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'cancel_requested') == 'true' then
  redis.call('HSET', KEYS[1], 'status', '"cancelled"', 'finished', ARGV[1],
             'note', '"cancelled; its worker had stopped"')
  move(KEYS[1], ARGV[3], 'running', 'cancelled', ARGV[1])
  return 'cancelled'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', '"failed"', 'error', ARGV[5], 'finished', ARGV[1], 'note', ARGV[2])
  move(KEYS[1], ARGV[3], 'running', 'failed', ARGV[1])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', '"queued"', 'note', ARGV[2], 'enqueued', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
move(KEYS[1], ARGV[3], 'running', 'queued', ARGV[1])
return 'requeued'
"""
# KEYS: job. ARGV: now, error, job id. A running job past its time limit whose worker does
# not stop it.
_EXPIRE = _MOVE + """
if redis.call('HGET', KEYS[1], 'status') ~= '"running"' then return 0 end
redis.call('HSET', KEYS[1], 'status', '"failed"', 'error', ARGV[2], 'finished', ARGV[1])
move(KEYS[1], ARGV[3], 'running', 'failed', ARGV[1])
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


def search_config(preset: str | None, overrides: dict, settings: SharedSettings) -> dict:
    """The full search settings of a new job: a preset, the caller's overrides and the
    operator's (checkpoint interval, feature override). Fixed at submission, so every attempt
    of the job, on any worker, resumes its checkpoint with exactly the same settings."""
    extra: dict = {"checkpoint_every_s": settings.checkpoint_every_s}
    if settings.search_features:
        extra["features"] = settings.search_features
    return asdict(config_from(preset, **{**overrides, **extra}))


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


class JobStore:
    """Job records, their progress and their leases, in one Redis."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._start, self._update, self._finish, self._cancel, self._requeue, self._expire, \
            self._renew, self._release = (client.register_script(s) for s in (
                _START, _UPDATE, _FINISH, _CANCEL, _REQUEUE, _EXPIRE, _RENEW, _RELEASE))

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"slt:job:{job_id}" + (f":{part}" if part else "")

    # ---- records ------------------------------------------------------------------------
    def create(self, *, domain: str, dataset: str, preset: str | None, config: dict, base: dict,
               promote: bool, time_limit_s: float) -> dict:
        job_id, now = uuid.uuid4().hex, time.time()
        job = dict(job_id=job_id, domain=domain, dataset=dataset, preset=preset, config=config,
                   base=base, promote=promote, time_limit_s=time_limit_s, status=QUEUED,
                   progress=0.0, iteration=0, iterations=config["iterations"], loss=None, lr=None,
                   eta_s=None, keep=None, mask_id=None, error=None, note=None, created=now,
                   enqueued=now, started=None, finished=None, heartbeat=None, attempts=0,
                   failures=0, requeues=0, resumed_from=None, preview_iteration=None, worker=None,
                   cancel_requested=False, checkpoint_iteration=None)
        with self.r.pipeline() as p:
            p.hset(self.key(job_id), mapping={k: json.dumps(v) for k, v in job.items()})
            p.zadd(ALL, {job_id: now})
            p.zadd(status_index(QUEUED), {job_id: now})
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
                for st in STATUSES:
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
            for st in STATUSES:
                p.zcard(status_index(st))
            return dict(zip(STATUSES, (int(n) for n in p.execute())))

    def losses(self, job_id: str) -> list[list]:
        return [json.loads(x) for x in self.r.lrange(self.key(job_id, "losses"), 0, -1)]

    def preview(self, job_id: str) -> bytes | None:
        return self.r.get(self.key(job_id, "preview"))

    def active_ids(self) -> list[str]:
        return sorted(i.decode() for i in self.r.smembers(ACTIVE))

    def set_fields(self, job_id: str, **fields) -> None:
        """Fields that are not progress of a run (enqueue bookkeeping)."""
        self.r.hset(self.key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def control(self, job_id: str) -> tuple[str | None, bool]:
        """(status, cancel requested): what a running search checks every iteration."""
        st, cancel = self.r.hmget(self.key(job_id), "status", "cancel_requested")
        return (json.loads(st) if st else None), bool(cancel and json.loads(cancel))

    # ---- status changes -------------------------------------------------------------------
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
        """Progress of a running job, written only by its lease holder; False if it is not."""
        flat = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        pt = json.dumps([point[0], _finite(point[1])]) if point else ""
        job_id = lease.job_id
        return bool(self._update(keys=[self.key(job_id), lease.key, self.key(job_id, "losses"),
                                       self.key(job_id, "preview")],
                                 args=[lease.token, pt, preview or b"", LOSS_POINTS, *flat]))

    def touch(self, lease: Lease) -> bool:
        """Progress without a new iteration (the real-statistics pass): the job is not stalled."""
        return self.update(lease, {"heartbeat": time.time()})

    def finish(self, lease: Lease, status: str, **fields) -> bool:
        """running -> `status` (a terminal one, or queued to hand the job back) by the lease holder."""
        flat = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        return bool(self._finish(keys=[self.key(lease.job_id), lease.key],
                                 args=[lease.token, status, lease.job_id, time.time(), *flat]))

    def requeue_running(self, job_id: str, note: str, *, max_failures: int = 1 << 30,
                        error: str = "", kind: str = "lost", since: float = 0.0,
                        token: str = "") -> str:
        """A running job that failed goes back to queued ('requeued'), one more failure
        counted; at `max_failures` it ends 'failed' with `error`; 'cancelled' if a cancel was
        asked. `kind`: 'lost' (no live lease, else 'leased'), 'stalled' (no progress since
        `since`, else 'progressing'; its lease is revoked) or 'handback' (by the holder of
        lease `token`, else 'lost'). Otherwise its status or 'missing'."""
        return self._str(self._requeue(
            keys=[self.key(job_id), self.key(job_id, "lease")],
            args=[time.time(), json.dumps(note), job_id, max_failures, json.dumps(error), kind,
                  token if kind == "handback" else since]))

    def expire_running(self, job_id: str, error: str) -> bool:
        return bool(self._expire(keys=[self.key(job_id)], args=[time.time(), json.dumps(error), job_id]))

    def claim_resend(self, job_id: str, ttl_s: float) -> bool:
        """True for the one caller (of many watchdogs) that may send a job's message again now."""
        return bool(self.r.set(self.key(job_id, "resend"), "1", nx=True, px=max(1, int(ttl_s * 1000))))

    # ---- retention ------------------------------------------------------------------------
    def expired(self, retention_s: float, now: float | None = None, limit: int = 500) -> list[str]:
        """Finished jobs past retention whose previews, curves and checkpoints are still kept."""
        cutoff = (now or time.time()) - retention_s
        return [i.decode() for i in self.r.zrangebyscore(FINISHED, "-inf", cutoff, start=0, num=limit)]

    def trim(self, job_id: str) -> None:
        """Drop a finished job's preview and loss curve; the record stays, compact."""
        if not self.r.exists(self.key(job_id)):
            self.r.zrem(FINISHED, job_id)
            return
        with self.r.pipeline() as p:
            p.delete(self.key(job_id, "losses"), self.key(job_id, "preview"),
                     self.key(job_id, "resend"))
            p.hset(self.key(job_id), mapping={"preview_iteration": "null", "trimmed": "true"})
            p.zrem(FINISHED, job_id)
            p.execute()

    # ---- leases ---------------------------------------------------------------------------
    def lease(self, job_id: str, owner: str, ttl_s: float) -> Lease:
        return Lease(self, job_id, owner, ttl_s)

    def lease_holder(self, job_id: str) -> str | None:
        raw = self.r.get(self.key(job_id, "lease"))
        return raw.decode() if raw else None

    @staticmethod
    def _str(x) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)


class Lease:
    """A job's lease: a token in Redis with a TTL, renewed by a heartbeat thread while held."""

    def __init__(self, store: JobStore, job_id: str, owner: str, ttl_s: float):
        self.store, self.job_id, self.ttl_s = store, job_id, ttl_s
        self.key = store.key(job_id, "lease")
        self.token = f"{owner}/{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()  # set when the heartbeat finds the lease gone

    @property
    def _ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def acquire(self) -> bool:
        return bool(self.store.r.set(self.key, self.token, nx=True, px=self._ms))

    def renew(self) -> bool:
        return bool(self.store._renew(keys=[self.key], args=[self.token, self._ms]))

    def release(self) -> None:
        try:
            self.store._release(keys=[self.key], args=[self.token])
        except redis.RedisError as e:  # it expires by itself
            log.warning("could not release the lease of job %s: %s", self.job_id, e)

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
                if self.renew():
                    last_ok = time.monotonic()
                    continue
                log.error("job %s: lease lost (expired and taken over?); this run stops", self.job_id)
                self.lost.set()
                return
            except redis.RedisError as e:
                # Redis away for a moment: the lease still counts down there; give up only once
                # it must have expired, since someone else may run the job by then
                log.warning("job %s: could not renew the lease: %s", self.job_id, e)
                if time.monotonic() - last_ok > self.ttl_s:
                    self.lost.set()
                    return
