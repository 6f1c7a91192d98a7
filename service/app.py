"""The FastAPI application: state built once at startup, one router per resource."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors, openapi
from service.admission import Admission
from service.auth import require_reader
from service.departed import DropDeparted
from service.routers import admin, datasets, domains, generate, health, jobs, masks, playground
from service.settings import Settings, get_settings
from service.state import AppState
from store import faults
from store.connection import memory_policy

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.core = AppState(settings)
        await app.state.core.start()
        await asyncio.to_thread(warn_about_store, app.state.core.probe)
        try:
            yield
        finally:
            await app.state.core.stop()

    app = FastAPI(title="Strong lottery tickets: one random generator, a mask per domain",
                  version="0.1.0", lifespan=lifespan, generate_unique_id_function=operation_id)
    app.state.settings = settings
    # Probes are always open; the dashboard's page and static files hold no secret (the page asks
    # for a token). Everything else, reads included, needs a token where SLT_READ_TOKEN is set.
    app.include_router(health.probes)
    app.include_router(admin.router)
    app.include_router(playground.router)  # the public playground at / (its page holds no secret)
    for r in (generate, domains, masks, jobs, datasets, health):
        app.include_router(r.router, dependencies=[Depends(require_reader)])
    app.add_middleware(DropDeparted)  # a generation whose client left is cancelled
    app.add_middleware(Admission)  # outermost, the early 429: a refusal must cost next to nothing
    openapi.install(app)  # error bodies and configured bounds as the app really has them
    errors.install(app)  # each domain and store error -> its one HTTP answer

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": openapi.allowed_methods(app, request.url.path)}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        msg = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": msg or "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never a traceback to the client
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    return app


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operation id: the route function's name (`list_masks`, `submit_search`), what
    a client calls, instead of FastAPI's default name + path + method (`submit_masks_post`)."""
    return route.name


def warn_about_store(client: redis.Redis) -> None:
    """Log at start what /readyz reports: a Redis configuration that can lose data."""
    try:
        memory = memory_policy(client)
    except redis.RedisError as e:
        log.warning("could not read Redis's memory policy: %s", faults.describe(e))
        return
    for warning in memory.warnings:
        log.warning("%s", warning)


def app() -> FastAPI:
    """uvicorn --factory service.app:app"""
    return create_app()
