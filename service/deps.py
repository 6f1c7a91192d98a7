"""FastAPI dependencies that hand routes the app's long-lived objects."""
from __future__ import annotations

from fastapi import HTTPException, Request, status

from service.engine import Engine
from service.state import AppState


def get_state(request: Request) -> AppState:
    core = getattr(request.app.state, "core", None)
    if core is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting",
                            headers={"Retry-After": "1"})
    return core


def get_engine(request: Request) -> Engine:
    engine = getattr(get_state(request), "engine", None)
    if engine is None or not engine.base_ready:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the generator is starting",
                            headers={"Retry-After": "1"})
    return engine
