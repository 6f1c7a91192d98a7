"""Admin authentication: `Authorization: Bearer <SLT_ADMIN_TOKEN>`, compared in constant time."""
from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="SLT_ADMIN_TOKEN")


def require_admin(request: Request,
                  creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin routes are disabled: SLT_ADMIN_TOKEN is not set")
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin token required (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
