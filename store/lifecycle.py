"""The job lifecycle in one place: statuses, events, the one transition table, the outcomes an
operation reports, and the names of every key a job has in Redis.

A job moves only by an event from this table. The Lua scripts of store/jobs.py embed the same
table (`LUA_TRANSITION`, generated from `TRANSITIONS`), so a status change in Redis and a check
in Python cannot disagree:

    queued   --start-->          running    a worker holding the lease takes it
    queued   --cancel-->         cancelled  cancelled before it ran
    running  --start-->          running    a new lease holder re-takes it (its old lease expired)
    running  --reclaim-->        running    the same holder takes its lease back after a store outage
    running  --cancel-->         running    a cancel is asked: its worker stops at the next iteration
    running  --succeed-->        succeeded  the mask is in the catalog
    running  --fail-->           failed     the job's own error, or its time limit
    running  --stop_cancelled--> cancelled  its worker stopped at the cancel request
    running  --hand_back-->      queued     its worker is stopping (no failure counted)
    running  --retry-->          queued     a failure counted, below SLT_MAX_ATTEMPTS
    running  --give_up-->        failed     a failure counted, at SLT_MAX_ATTEMPTS
    running  --abandon-->        cancelled  its worker was lost and a cancel had been asked
    running  --expire-->         failed     past its time limit, its worker unresponsive

Terminal statuses take no event.
"""
from __future__ import annotations

import json
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class Event(StrEnum):
    START = "start"
    RECLAIM = "reclaim"
    CANCEL = "cancel"
    SUCCEED = "succeed"
    FAIL = "fail"
    STOP_CANCELLED = "stop_cancelled"
    HAND_BACK = "hand_back"
    RETRY = "retry"
    GIVE_UP = "give_up"
    ABANDON = "abandon"
    EXPIRE = "expire"


S, E = Status, Event
TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (S.QUEUED, E.START): S.RUNNING,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.START): S.RUNNING,
    (S.RUNNING, E.RECLAIM): S.RUNNING,
    (S.RUNNING, E.CANCEL): S.RUNNING,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.STOP_CANCELLED): S.CANCELLED,
    (S.RUNNING, E.HAND_BACK): S.QUEUED,
    (S.RUNNING, E.RETRY): S.QUEUED,
    (S.RUNNING, E.GIVE_UP): S.FAILED,
    (S.RUNNING, E.ABANDON): S.CANCELLED,
    (S.RUNNING, E.EXPIRE): S.FAILED,
}
del S, E

# What a lease holder may end a run with (JobStore.finish), and the event each one is.
FINISH_EVENTS: dict[Status, Event] = {
    Status.SUCCEEDED: Event.SUCCEED,
    Status.FAILED: Event.FAIL,
    Status.CANCELLED: Event.STOP_CANCELLED,
    Status.QUEUED: Event.HAND_BACK,
}


def next_status(status: str, event: str) -> Status | None:
    """The status `event` takes a job in `status` to; None when the table refuses it."""
    try:
        return TRANSITIONS.get((Status(status), Event(event)))
    except ValueError:
        return None


class Outcome(StrEnum):
    """What an operation on a job reports, besides a status it leaves the job in."""

    OK = "ok"  # the lease holder now runs the job
    MISSING = "missing"  # no such job
    LOST = "lost"  # the caller does not hold the job's lease (expired, taken over)
    LEASED = "leased"  # a live lease: its worker is alive, not lost
    PROGRESSING = "progressing"  # not stalled: it made progress since
    REQUEUED = "requeued"  # back in the queue (handed back, or a failure counted)
    RETRY = "retry"  # handed back after an error, a failure counted: sent behind the rest
    CANCELLING = "cancelling"  # a cancel is asked; its worker stops at the next iteration
    FINISHED = "finished"  # too late: it already ended
    STORE_DOWN = "store_down"  # the shared store stayed unreachable; the watchdog takes over


# ---- keys ------------------------------------------------------------------------------------
# Every key a job has, named once. The Lua scripts get their prefixes from here too.
PREFIX = "slt:job:"
ALL = "slt:jobs"  # every job by creation time
ACTIVE = "slt:jobs:active"  # queued or running: what the watchdog sweeps
FINISHED = "slt:jobs:finished"  # terminal jobs by finish time, until retention deletes them
INDEXED = "slt:jobs:indexed"  # set once the status indexes cover every job
STATUS_PREFIX = "slt:jobs:status:"
PARTS = ("lease", "losses", "preview", "resend", "checkpoint", "events")  # keys beside the record


def job_key(job_id: str, part: str = "") -> str:
    """`slt:job:<id>` (the record hash), or a key beside it: one of PARTS."""
    if part and part not in PARTS:
        raise ValueError(f"unknown job key part {part!r}")
    return PREFIX + job_id + (f":{part}" if part else "")


def lease_key(job_id: str) -> str:
    return job_key(job_id, "lease")


def status_index(status: str) -> str:
    """Jobs of one status by creation time: what GET /jobs?status= and /metrics read."""
    return STATUS_PREFIX + Status(status)


# ---- the table in Lua ------------------------------------------------------------------------

def _lua_table() -> str:
    rows: dict[str, dict[str, str]] = {}
    for (st, ev), to in TRANSITIONS.items():
        rows.setdefault(st.value, {})[ev.value] = to.value
    body = ", ".join(
        f"[{json.dumps(st)}] = {{" + ", ".join(f"[{json.dumps(ev)}] = {json.dumps(to)}"
                                              for ev, to in sorted(evs.items())) + "}"
        for st, evs in sorted(rows.items()))
    return "{" + body + "}"


# `transition(job_key, job_id, event, now)`: the one way a script changes a job's status. It
# returns the new status, or (nil, why) where why is 'missing' or the status that refused the
# event; on a change it moves the job between the status indexes, and a terminal status takes
# it out of the active set and into the finished index (for retention).
LUA_TRANSITION = f"""
local TRANSITIONS = {_lua_table()}
local TERMINAL = {{{", ".join(f"[{json.dumps(s.value)}] = true" for s in sorted(TERMINAL))}}}
local function transition(job, id, event, now)
  local raw = redis.call('HGET', job, 'status')
  if not raw then return nil, 'missing' end
  local st = cjson.decode(raw)
  local to = TRANSITIONS[st] and TRANSITIONS[st][event]
  if not to then return nil, st end
  if to ~= st then
    local created = tonumber(redis.call('HGET', job, 'created')) or tonumber(now)
    redis.call('HSET', job, 'status', cjson.encode(to))
    redis.call('ZREM', {json.dumps(STATUS_PREFIX)} .. st, id)
    redis.call('ZADD', {json.dumps(STATUS_PREFIX)} .. to, created, id)
    if TERMINAL[to] then
      redis.call('SREM', {json.dumps(ACTIVE)}, id)
      redis.call('ZADD', {json.dumps(FINISHED)}, tonumber(now), id)
    end
  end
  return to
end
"""
