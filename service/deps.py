"""FastAPI dependencies that hand routes the app's long-lived objects."""
from __future__ import annotations

from fastapi import Request

from service.engine import Engine
from service.errors import NotRunning
from service.state import AppState


def get_state(request: Request) -> AppState:
    core = getattr(request.app.state, "core", None)
    if core is None:
        raise NotRunning("the service is starting")
    return core


def get_engine(request: Request) -> Engine:
    engine = getattr(get_state(request), "engine", None)
    if engine is None or not engine.base_ready:
        raise NotRunning("the generator is starting")
    return engine
