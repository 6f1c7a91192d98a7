"""The service's domain errors and the one table that maps each (and what the store and the
upload parser raise) to its HTTP answer, installed as app-level exception handlers:
`{"detail": ...}` as JSON, with `Retry-After` on 429 and 503 and `WWW-Authenticate` on 401.
Routes and dependencies raise these; none raises an HTTPException or translates an error
itself (FastAPI's own 404/405/422 of routing and validation are answered in service/app.py)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError

from service.uploads import UploadError
from store import faults
from store.faults import StoreUnavailable
from trainer.masks import ForeignMaskError, MaskError

log = logging.getLogger(__name__)


class EngineError(Exception):
    """Base of the service's errors; each subclass has one HTTP status in `STATUS`."""


class UnknownDomain(EngineError, LookupError):
    """No such domain (404)."""

    def __init__(self, name: str, hint: str = ""):
        super().__init__(f"unknown domain {name!r}" + (f"; {hint}" if hint else ""))
        self.name = name


class NotFound(EngineError, LookupError):
    """A job, dataset, preview or file that does not exist (404)."""


class Conflict(EngineError):
    """The request does not fit the resource's state, e.g. cancelling a finished job (409)."""


class InvalidRequest(EngineError):
    """Parameters that pass one by one but not together, or a bound of this deployment (422)."""


class TooLarge(EngineError):
    """A request body over a bound of this deployment (413)."""


class Unauthorized(EngineError):
    """No token, or a wrong one (401, with `WWW-Authenticate: Bearer`)."""


class Forbidden(EngineError):
    """Admin routes while SLT_ADMIN_TOKEN is not set (403)."""


class UnknownMask(EngineError, LookupError):
    """No such mask in the catalog, nor in the shared store (404)."""

    def __init__(self, mask_id: str, detail: str = ""):
        super().__init__(detail or f"no mask {mask_id}")
        self.mask_id = mask_id


class MaskUnavailable(EngineError):
    """A domain's active mask cannot be had or served here just now (503)."""


class ForeignBase(EngineError):
    """A domain points to a mask of another base (409)."""


class InUse(EngineError):
    """A mask that a domain serves or may roll back to, deleted without force (409)."""


class Saturated(EngineError):
    """A request that could not start within SLT_MAX_WAIT_MS, or a full queue (429)."""

    def __init__(self, retry_after: int, wait_s: float = 0.0):
        super().__init__(f"the generator is saturated: this request would wait about "
                         f"{wait_s:.1f} s in the queue; retry in {retry_after} s")
        self.retry_after = retry_after
        self.wait_s = wait_s


class NotRunning(EngineError):
    """Base not built yet, or the engine is shutting down (503)."""


class GenerationFailed(EngineError):
    """The forward pass failed (503)."""


# a fault of Redis, through redis-py (records) or through kombu (messages)
BROKER_ERRORS = (redis.RedisError, OperationalError)


@dataclass(frozen=True)
class Answer:
    status: int | Callable[[Exception], int]  # a number, or read off the error
    detail: Callable[[Exception], str] = str  # the body's `detail`
    retry_after: Callable[[Exception], int] | None = None
    headers: dict[str, str] | None = None


def _one_second(_: Exception) -> int:
    return 1


def store_fault(exc: Exception) -> str:
    """What is wrong with the store, named (store.faults.describe): out of memory and read-only
    are not "unreachable". kombu wraps redis-py's error: the named one is in its chain."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, redis.RedisError):
        cause = cause.__cause__ or cause.__context__
    return faults.describe(cause if cause is not None else exc)


_REDIS_FAULT = Answer(503, store_fault, _one_second)

# Most specific first: the first class an error is an instance of decides.
STATUS: tuple[tuple[type[Exception], Answer], ...] = (
    (Unauthorized, Answer(401, headers={"WWW-Authenticate": "Bearer"})),
    (Forbidden, Answer(403)),
    (UnknownDomain, Answer(404)),
    (UnknownMask, Answer(404)),
    (NotFound, Answer(404)),
    (Conflict, Answer(409)),
    (InvalidRequest, Answer(422)),
    (TooLarge, Answer(413)),
    (UploadError, Answer(lambda e: e.status_code)),  # type: ignore[attr-defined]
    (ForeignBase, Answer(409)),
    (InUse, Answer(409)),
    (Saturated, Answer(429, retry_after=lambda e: e.retry_after)),  # type: ignore[attr-defined]
    (MaskUnavailable, Answer(503, retry_after=_one_second)),
    (NotRunning, Answer(503, retry_after=_one_second)),
    (GenerationFailed, Answer(503, retry_after=_one_second)),
    (ForeignMaskError, Answer(409, lambda e: f"mask refused: {e}")),
    (MaskError, Answer(422, lambda e: f"not a usable mask file: {e}")),
    (redis.RedisError, _REDIS_FAULT),
    (OperationalError, _REDIS_FAULT),
    (StoreUnavailable, Answer(503, faults.describe, _one_second)),  # the object store, after retries
)


def answer_for(exc: Exception) -> Answer | None:
    for cls, answer in STATUS:
        if isinstance(exc, cls):
            return answer
    return None


def response_for(exc: Exception) -> JSONResponse:
    """The JSON answer of a mapped error (500 for anything else, never a traceback)."""
    answer = answer_for(exc)
    if answer is None:
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)
    headers = dict(answer.headers or {})
    if answer.retry_after:
        headers["Retry-After"] = str(answer.retry_after(exc))
    status = answer.status(exc) if callable(answer.status) else answer.status
    return JSONResponse({"detail": answer.detail(exc)}, status_code=status, headers=headers or None)


def install(app: FastAPI) -> None:
    """One exception handler per mapped class; each answers as `STATUS` says."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, (*BROKER_ERRORS, StoreUnavailable)):  # the operator wants to know, the client gets a 503
            log.warning("%s %s: %s", request.method, request.url.path, store_fault(exc))
        return response_for(exc)

    for cls, _ in STATUS:
        app.add_exception_handler(cls, handle)
