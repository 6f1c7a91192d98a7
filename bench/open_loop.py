"""Open-loop load: requests arrive at a constant rate whatever the server does, and each one's
latency counts from its scheduled arrival, so a slow server cannot slow the load down and hide
its own queueing (coordinated omission, which a closed loop such as wrk has by design).

Built on httpx's asyncio client with at most `connections` connections: an arrival that finds
every connection busy waits in the client, and that wait is part of its latency, as it would be
for a user. Runs in the benchmark's process; the API is its own process.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx


def percentile(xs: list[float], q: float) -> float | None:
    """The q-quantile by the nearest rank (q in [0, 1])."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


async def _run(url: str, rate: float, duration_s: float, connections: int,
               path: Callable[[int], str], timeout_s: float) -> dict:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    statuses: Counter[str] = Counter()
    ok_ms: list[float] = []
    all_ms: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        async def one(i: int, due: float) -> None:
            try:
                r = await client.get(path(i))
                statuses[str(r.status_code)] += 1
                ms = (time.perf_counter() - due) * 1e3
                all_ms.append(ms)
                if r.status_code == 200:
                    ok_ms.append(ms)
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1

        start = time.perf_counter() + 0.05
        total = int(rate * duration_s)
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
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
