"""Store outages as live processes saw them, so a job is not blamed for the store's own fault.

When Redis hangs or is away for longer than a lease (a stopped server, a partition, a
failover), every lease expires with it, although no worker died. A process that was alive
through it knows: its calls failed from one moment until they worked again. It then records
that span in the store (`slt:store:outages`, in Redis's own clock, so hosts' clocks do not
matter), and the watchdog does not count a lost lease whose silence overlaps a recorded
outage as a failure of the job. A worker that simply died records nothing, so a job that
crashes its worker is still counted and ends at SLT_MAX_ATTEMPTS.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

log = logging.getLogger(__name__)

KEY = "slt:store:outages"
KEEP = 200  # the newest spans kept

# KEYS: outages. ARGV: seconds the caller saw the store fail, spans kept. Ends the span now,
# by the server's clock.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local start = now - tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, cjson.encode({start, now}))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
return tostring(now)
"""


class OutageLog:
    """One process's view: `failed()` when a call to the store fails, `succeeded()` when one
    works; a failure span of at least `min_s` is recorded when the store answers again. Give
    `min_s` half a lease: a shorter outage cannot cost a lease (renewals come every third)."""

    def __init__(self, client: redis.Redis, min_s: float = 1.0):
        self.r, self.min_s = client, min_s
        self._since: float | None = None  # monotonic time of the first failure in a row
        self.away = 0.0  # seconds of the failure span the last success ended (0: none)
        self._lock = threading.Lock()
        self._record = client.register_script(_RECORD)

    @property
    def failing_for(self) -> float:
        """Seconds this process has seen the store fail, 0 while it works."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def failed(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def succeeded(self) -> float:
        """Record the failure span that just ended, if any; its length in seconds."""
        with self._lock:
            since, self._since = self._since, None
        if since is None:
            self.away = 0.0
            return 0.0
        seconds = self.away = time.monotonic() - since
        if seconds >= self.min_s:
            try:
                self._record(keys=[KEY], args=[seconds, KEEP])
                log.warning("the shared store was unreachable for %.1f s; recorded as an outage", seconds)
            except redis.RedisError as e:  # failing again: keep counting from the first failure
                with self._lock:
                    self._since = since if self._since is None else min(since, self._since)
                log.warning("store outage not recorded yet: %s", e)
        return seconds

    def timed(self, call):
        """`call()`, its time counted as an outage when it took `min_s` or more: a stopped
        server keeps a request waiting (the connection stays open), so it seems slow, not down."""
        t0 = time.monotonic()
        try:
            out = call()
        except redis.RedisError:
            self.failed()
            raise
        if time.monotonic() - t0 >= self.min_s:
            with self._lock:
                self._since = t0 if self._since is None else min(self._since, t0)
        self.succeeded()
        return out

    def spans_after(self, t: float) -> list[tuple[float, float]]:
        """Recorded outages (start, end) that ended after time `t` (seconds since the epoch)."""
        return [tuple(json.loads(m)) for m in self.r.zrangebyscore(KEY, f"({t}", "+inf")]

    def server_time(self) -> float:
        s, us = self.r.time()
        return s + us / 1e6
