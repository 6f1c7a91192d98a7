"""Refusing what cannot start in time, before the framework sees it.

Under overload most requests are refusals, and a closed-loop client sends the next one at once:
if a refusal cost what a request costs (routing, validation, dependencies, an exception turned
into a response), answering them would take the cores generation needs. So `GET /generate` is
checked here first, as plain ASGI: the query's `n` and domain, the batcher's wait estimate for
that domain's mask (a few dict reads), and a 429 with Retry-After written directly. What passes goes through the
router, whose batcher makes the same check again under its lock (the answer of record).

A refusal is answered at once, but the connection it came on is not read again for half the
bound (`pause_s`; `PacedHttpToolsProtocol`, the HTTP protocol `python -m service` runs): a
client that honours Retry-After waits at least as long anyway. A closed-loop client that retries at once
would otherwise keep the event loop answering refusals at full speed, a core taken from the
inference lanes (measured: at 256 connections the loop at 100% of a core, each lane at 57%).
The paused request is not lost: it is read, and admitted or refused, after the pause.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import Saturated

PATH = "/generate"
PAUSE = "slt.pause_reading_s"  # scope key: seconds the connection is not read after this response


def _query(query: bytes) -> tuple[int | None, str]:
    """The request's image count as the route reads it (default 1; None if not a number, so
    the route answers it: 422) and its domain."""
    n: int | None = 1
    domain = ""
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "n":
            n = int(value) if value.isdigit() else None
        elif key == "domain":
            domain = value
    return n, domain


def pause_s(retry_after: int, max_wait_s: float) -> float:
    """How long a refused connection is not read: half the bound (the Retry-After if shorter).
    So a connection is refused at most twice a bound (a closed loop costs a few hundred cheap
    refusals a second, not thousands), and its next request, admitted within the bound, is
    answered within 1.5 bounds of being sent. Pausing until the estimate said the request could
    start made that request's tail the pause plus a whole bound: p99 1.8-2.2 s at 256
    connections at width 0.25 on 2 cores, against 1.4-1.5 s with half a bound."""
    return min(float(retry_after), max_wait_s / 2)


class Admission:
    """ASGI middleware: the early 429 of `GET /generate` (see the module docstring)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] in ("GET", "HEAD"):
            engine = getattr(getattr(scope["app"].state, "core", None), "engine", None)
            n, domain = _query(scope.get("query_string", b""))
            # a domain this replica knows: its mask's share of the queue (the DRR-aware wait);
            # one it does not know yet goes to the route, which resolves it
            mask_id = engine.mirror.active(domain) if engine is not None and domain else None
            if mask_id is not None and n is not None:
                batcher = engine.batcher
                retry = batcher.refusal(n, mask_id)
                if retry is not None:
                    scope[PAUSE] = pause_s(retry, batcher.max_wait_s)
                    await _refuse(send, retry, batcher.estimated_wait(n, mask_id))
                    batcher.count_refusal()
                    return
        await self.app(scope, receive, send)


async def _refuse(send: Send, retry_after: int, wait_s: float) -> None:
    body = json.dumps({"detail": str(Saturated(retry_after, wait_s))}).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class PacedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that after a response whose scope carries PAUSE
    (a refusal) the connection's next request is not read for that many seconds (see the
    module docstring). The response itself is already written in full."""

    def on_response_complete(self) -> None:
        pause = self.cycle.scope.get(PAUSE) if self.cycle is not None else None
        if pause and not self.transport.is_closing():
            self.flow.pause_reading()
            self.loop.call_later(pause, self._after_pause)
            return
        super().on_response_complete()

    def _after_pause(self) -> None:
        super().on_response_complete()  # resumes reading (a closed connection: nothing)
