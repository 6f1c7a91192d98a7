"""FastAPI dependencies that hand routes the app's long-lived objects.

They are `async def` because they never block: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop per request that cost the event loop about an eighth of its time
under load (py-spy, 256 connections)."""
from __future__ import annotations

from fastapi import Request

from service.engine import Engine
from service.errors import NotRunning
from service.state import AppState


def _core(request: Request) -> AppState:
    core = getattr(request.app.state, "core", None)
    if core is None:
        raise NotRunning("the service is starting")
    return core


async def get_state(request: Request) -> AppState:
    return _core(request)


async def get_engine(request: Request) -> Engine:
    engine = getattr(_core(request), "engine", None)
    if engine is None or not engine.base_ready:
        raise NotRunning("the generator is starting")
    return engine
