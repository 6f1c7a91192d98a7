"""What a fault of the shared store is, and whether it passes by itself.

Every caller that talks to Redis or the object store asks `transient(e)` before it decides
what an exception means: a transient fault (Redis unreachable, hung, loading, failing over; an
S3 5xx, throttling, a dropped connection) is the store's, and a job that meets one waits and
retries; anything else is the job's own (a bad dataset, a bug) and ends it. `describe(e)` names
the fault for an operator: an out-of-memory or read-only Redis is not "unreachable".
"""
from __future__ import annotations

import redis


class StoreUnavailable(Exception):
    """The shared store cannot be used just now (a transient fault, retried with backoff)."""


def _redis_kind(e: redis.RedisError) -> str | None:
    text = str(e)
    if isinstance(e, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return "read-only (a replica, or a failover in progress)"
    if isinstance(e, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return "out of memory (maxmemory reached)"
    if isinstance(e, redis.exceptions.BusyLoadingError) or text.startswith("LOADING"):
        return "loading its data set"
    if isinstance(e, redis.exceptions.TimeoutError):
        return "not answering (timed out)"
    if isinstance(e, redis.exceptions.ConnectionError):
        return "unreachable"
    if text.startswith(("MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY ")):
        return "busy or failing over"
    return None


def _s3_status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status else None


def transient(e: BaseException) -> bool:
    """Whether `e` is a fault of the store that may pass by itself (retry it)."""
    if isinstance(e, StoreUnavailable):
        return True
    if isinstance(e, redis.RedisError):
        return _redis_kind(e) is not None
    try:  # botocore only where S3 is configured
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        status = _s3_status(e) or 0
        return status >= 500 or status == 429 or code in (
            "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
            "ServiceUnavailable", "RequestTimeTooSkewed")
    return isinstance(e, BotoCoreError)  # endpoint unreachable, read timeout, connection closed


def describe(e: BaseException) -> str:
    """A short name of the store's fault, for logs, job notes and HTTP answers."""
    if isinstance(e, redis.RedisError):
        kind = _redis_kind(e)
        return f"Redis is {kind}" if kind else f"Redis error: {e}"
    status = _s3_status(e)
    if status is not None:
        return f"object store answered {status}: {e}"
    return f"{type(e).__name__}: {e}"
