"""Liveness, readiness (for a load balancer) and Prometheus metrics."""
from __future__ import annotations

import asyncio
from typing import Literal

import redis
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from service.openapi import errors

router = APIRouter(tags=["health"])

READYZ = """Whether a load balancer should send this replica traffic.

- **503** `not ready: the base generator is not built yet`, `... no generation has succeeded
  yet` (the first real generation runs at start), or `... shutting down`.
- **503** `not ready: Redis is unreachable and this replica knows no domain`: it could serve
  nothing.
- **200** `"status": "degraded"`, `"redis": false`: Redis is unreachable, but the domains this
  replica knows (`domains_known`) are still served from its RAM and disk cache of masks; new
  domains, promotions elsewhere, jobs and admin routes wait for Redis. A Redis blip does not
  take every replica out at once.
- **200** `"status": "ready"`, `"redis": true`: everything works.

Every 503 carries `Retry-After`."""


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    status: Literal["ready", "degraded"] = Field(description="degraded: Redis unreachable, known domains served")
    redis: bool = Field(description="Redis answered a PING just now")
    domains_known: int = Field(description="domains this replica resolves without Redis")
    base_sha256: str
    device: str
    torch_threads: int
    masks_in_ram: int
    masks_ram_bytes: int
    masks_ram_budget: int = Field(description="SLT_MASK_RAM_BYTES")
    resident_masks: int
    resident_bytes: int
    queue_images: int


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@router.get("/readyz", response_model=Readiness, responses=errors(503), description=READYZ,
            summary="Readiness: ready, degraded (Redis down, known domains served) or 503")
async def readyz(request: Request):
    core = getattr(request.app.state, "core", None)
    engine = getattr(core, "engine", None)
    reason = None
    redis_ok = False
    if engine is None or not engine.base_ready:
        reason = "the base generator is not built yet"
    elif engine.stopping:
        reason = "shutting down"
    elif not engine.generated_ok:
        reason = "no generation has succeeded yet"
    else:
        redis_ok = await asyncio.to_thread(_ping, core.probe)
        if not redis_ok and engine.mirror.known() == 0:
            reason = "Redis is unreachable and this replica knows no domain"
    if reason:
        return JSONResponse({"detail": f"not ready: {reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
    stats = engine.stats()
    return Readiness(ready=True, status="ready" if redis_ok else "degraded", redis=redis_ok, **stats)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}, **errors(503)})
async def metrics(request: Request) -> Response:
    engine = getattr(getattr(request.app.state, "core", None), "engine", None)
    if engine is None:
        return JSONResponse({"detail": "starting"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
    body = await asyncio.to_thread(engine.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
