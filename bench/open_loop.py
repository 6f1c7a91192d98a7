"""Open-loop load: requests arrive at a constant rate whatever the server does, and each one's
latency counts from its scheduled arrival, so a slow server cannot slow the load down and hide
its own queueing (coordinated omission, which a closed loop such as wrk has by design).

`connections` keep-alive HTTP/1.1 connections, each a coroutine speaking the protocol over
asyncio streams itself: an arrival that finds every connection busy waits in the client, and
that wait is part of its latency, as it would be for a user. Not httpx: on a 2-core host its
per-request Python cost kept the client from sending faster than ~100 requests/s (it measured
its own backlog); this costs tens of microseconds a request. Runs in the benchmark's process;
the API is its own process.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit


def percentile(xs: list[float], q: float) -> float | None:
    """The q-quantile by the nearest rank (q in [0, 1])."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response: (status, whether the server keeps the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    conn = headers.get("connection", "").lower()  # HTTP/1.0 closes unless it says keep-alive
    return status, conn == "keep-alive" or (lines[0].startswith("HTTP/1.1") and conn != "close")


async def _run(url: str, rate: float, duration_s: float, connections: int,
               path: Callable[[int], str], timeout_s: float) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    statuses: Counter[str] = Counter()
    ok_ms: list[float] = []
    all_ms: list[float] = []
    arrivals: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connection() -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (item := await arrivals.get()) is not None:
            i, due = item
            try:
                for attempt in (0, 1):
                    reused = stream is not None
                    if stream is None:
                        stream = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
                    reader, writer = stream
                    writer.write(f"GET {path(i)} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                    try:
                        status, keep = await asyncio.wait_for(_response(reader), timeout_s)
                        break
                    except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                        # a kept-alive connection the server closed while idle (its keep-alive
                        # timeout): sent again once on a new one, as HTTP clients do for a GET
                        stream[1].close()
                        stream = None
                        partial = getattr(e, "partial", b"")
                        if attempt or not reused or partial:
                            raise
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as e:
                statuses[type(e).__name__] += 1  # a socket error, a timeout, a malformed answer
                if stream is not None:
                    stream[1].close()
                stream = None
                continue
            ms = (time.perf_counter() - due) * 1e3
            statuses[str(status)] += 1
            all_ms.append(ms)
            if status == 200:
                ok_ms.append(ms)
            if not keep:
                writer.close()
                stream = None
        if stream is not None:
            stream[1].close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter() + 0.05
    total = int(rate * duration_s)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arrivals.put_nowait((i, due))
    for _ in workers:
        arrivals.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    # every answer but a 200 or a 429 (the refusal the design promises) is an error, as is every
    # failed request (connect, read, timeout)
    errors = sum(v for k, v in statuses.items() if k not in ("200", "429"))
    return {"rate_per_s": rate, "connections": connections, "sent": total,
            "ok": len(ok_ms), "ok_per_s": round(len(ok_ms) / elapsed, 2),
            "refused_429": statuses.get("429", 0), "errors": errors, "statuses": dict(statuses),
            "p50_ms": percentile(ok_ms, 0.5), "p90_ms": percentile(ok_ms, 0.9),
            "p99_ms": percentile(ok_ms, 0.99), "p99_all_ms": percentile(all_ms, 0.99)}


def run(url: str, rate: float, duration_s: float, connections: int, path: Callable[[int], str],
        timeout_s: float = 30.0) -> dict:
    """One open-loop level: `rate` requests per second for `duration_s` over at most
    `connections` connections; `path(i)` is the i-th request's path and query. Latency
    percentiles (ms) of the 200s from their arrival, counts of 429s and of errors (5xx and
    socket errors)."""
    return asyncio.run(_run(url, rate, duration_s, connections, path, timeout_s))
