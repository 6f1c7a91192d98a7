"""Dropping the work of clients that have gone.

A client that gives up (its timeout, a closed tab, a load generator stopping) leaves its request
in the queue, and under overload that queue holds up to `SLT_MAX_WAIT_MS` of work: made for
nobody, while the clients still waiting wait longer. So a `GET /generate` or `/interpolate`
request (the routes that queue images) runs as a task beside a watch on its connection; when
the client disconnects before its response is written, the task is cancelled, which cancels its batcher future (asyncio.wrap_future passes
the cancel on), and the batcher skips cancelled requests' images not yet handed to a pass.
Images already in a pass are finished and dropped.
"""
from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATHS = ("/generate", "/interpolate")  # the routes that queue images


class DropDeparted:
    """ASGI middleware: cancel a generation whose client disconnected (see the module docstring)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
                and scope["path"] in PATHS):
            await self.app(scope, receive, send)
            return
        first = await receive()  # a GET's whole request (no body)
        if first["type"] != "http.request" or first.get("more_body"):
            await self.app(scope, _replay(first, receive), send)  # not the usual shape: no watch
            return
        answered = asyncio.Event()  # the response's last part is written

        async def tracked_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        gone = asyncio.Event()

        async def app_receive() -> Message:  # what the app reads: the request, then the end
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        task = asyncio.ensure_future(self.app(scope, app_receive, tracked_send))
        # the only reader of the connection's messages from here: the next one is its end (a
        # disconnect, or uvicorn's after the response completes)
        watch = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done() and not task.done() and not answered.is_set():
                gone.set()
                task.cancel()  # the client left before its answer: drop its work
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
            await task
        finally:
            watch.cancel()
            if not task.done():  # this coroutine itself was cancelled (shutdown)
                task.cancel()


def _replay(first: Message, receive: Receive) -> Receive:
    """`receive` with `first`, already read, given back first."""
    pending: list[Message] = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()
    return replayed
