"""Authentication: `Authorization: Bearer <token>`, compared in constant time.

Admin routes need SLT_ADMIN_TOKEN. Reads are public unless SLT_READ_TOKEN is set (a private
deployment): then every route but the probes needs the read token or the admin token."""
from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, Unauthorized

_bearer = HTTPBearer(auto_error=False, description="SLT_ADMIN_TOKEN")


# the dependencies are `async def`: they never block, and a plain `def` would cost each request
# a hop to FastAPI's thread pool (see service/deps.py)
def _bearer_token(request: Request) -> bytes:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


def _matches(given: bytes, *tokens: str | None) -> bool:
    # every candidate compared, so the time does not tell which one matched
    return bool(given) and sum(hmac.compare_digest(given, t.encode()) for t in tokens if t) > 0


async def require_reader(request: Request) -> None:
    """With SLT_READ_TOKEN set, the read token or the admin token; without it, nothing. The
    header is read directly, not through a security scheme, so the OpenAPI document of a public
    deployment (the default) claims no security its reads do not have."""
    settings = request.app.state.settings
    if not settings.read_token:
        return
    if not _matches(_bearer_token(request), settings.read_token, settings.admin_token):
        raise Unauthorized("this deployment is private: a read or admin token is required "
                           "(Authorization: Bearer <token>)")


async def require_admin(request: Request,
                  creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise Forbidden("admin routes are disabled: SLT_ADMIN_TOKEN is not set")
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        raise Unauthorized("admin token required (Authorization: Bearer <token>)")
