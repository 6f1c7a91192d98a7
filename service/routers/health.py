"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import asyncio

import redis
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from service.openapi import errors

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    base_sha256: str
    device: str
    torch_threads: int
    masks_in_ram: int
    masks_ram_bytes: int
    resident_masks: int
    resident_bytes: int
    queue_images: int


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=errors(503),
            summary="Readiness: base built, one real generation done, Redis reachable")
async def readyz(request: Request):
    core = getattr(request.app.state, "core", None)
    engine = getattr(core, "engine", None)
    reason = None
    if engine is None or not engine.base_ready:
        reason = "the base generator is not built yet"
    elif not engine.generated_ok:
        reason = "no generation has succeeded yet"
    else:
        try:
            await asyncio.to_thread(core.redis.ping)
        except redis.RedisError:
            reason = "Redis is unreachable"
    if reason:
        return JSONResponse({"detail": f"not ready: {reason}"}, status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "1"})
    return Readiness(ready=True, **engine.stats())


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
