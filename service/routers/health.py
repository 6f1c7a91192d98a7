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
from store.connection import MemoryPolicy, memory_policy

# Probes stay open for load balancers and orchestrators even in a private deployment
# (SLT_READ_TOKEN); /metrics is on `router`, behind the token there.
probes = APIRouter(tags=["health"])
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

`redis_maxmemory` and `redis_maxmemory_policy` say how Redis bounds its memory; `warnings`
names a configuration that can lose data (no `maxmemory`, or an evicting policy: anything but
`noeviction` deletes job records, catalog entries and mask blobs at the bound). A warning does
not make the replica unready: it is for the operator.

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
    redis_maxmemory: int | None = Field(None, description="Redis maxmemory in bytes (0: unbounded); "
                                                          "null: not known just now")
    redis_maxmemory_policy: str | None = Field(None, description="Redis maxmemory-policy")
    warnings: list[str] = Field(default_factory=list,
                                description="configurations of the store that can lose data")


@probes.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def get_liveness() -> Health:
    return Health(status="ok")


def _ping(client: redis.Redis) -> tuple[bool, MemoryPolicy | None]:
    """(Redis answers, its memory policy): one round trip more than a PING, on the probe client."""
    try:
        if not client.ping():
            return False, None
    except redis.RedisError:
        return False, None
    try:
        return True, memory_policy(client)
    except redis.RedisError:  # INFO refused (an ACL): answering is what readiness needs
        return True, None


@probes.get("/readyz", response_model=Readiness, responses=errors(503), description=READYZ,
            summary="Readiness: ready, degraded (Redis down, known domains served) or 503")
async def get_readiness(request: Request):
    core = getattr(request.app.state, "core", None)
    engine = getattr(core, "engine", None)
    reason = None
    redis_ok, memory = False, None
    if engine is None or not engine.base_ready:
        reason = "the base generator is not built yet"
    elif engine.stopping:
        reason = "shutting down"
    elif not engine.generated_ok:
        reason = "no generation has succeeded yet"
    else:
        redis_ok, memory = await asyncio.to_thread(_ping, core.probe)
        if not redis_ok and engine.mirror.known() == 0:
            reason = "Redis is unreachable and this replica knows no domain"
    if reason:
        return JSONResponse({"detail": f"not ready: {reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
    stats = engine.stats()
    store = ({"redis_maxmemory": memory.maxmemory, "redis_maxmemory_policy": memory.policy,
              "warnings": memory.warnings} if memory else {})
    return Readiness(ready=True, status="ready" if redis_ok else "degraded", redis=redis_ok,
                     **store, **stats)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}, **errors(503)})
async def get_metrics(request: Request) -> Response:
    engine = getattr(getattr(request.app.state, "core", None), "engine", None)
    if engine is None:
        return JSONResponse({"detail": "starting"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
    body = await asyncio.to_thread(engine.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
