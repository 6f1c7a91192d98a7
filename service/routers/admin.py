"""The admin dashboard: one server-rendered page, a script and a stylesheet; no build step.
The page holds no secret: it asks for the admin token and calls the JSON API with it."""
from __future__ import annotations

from pathlib import Path as FsPath

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from service.errors import NotFound

router = APIRouter(include_in_schema=False)

_HERE = FsPath(__file__).resolve().parent.parent
_STATIC = _HERE / "static"
templates = Jinja2Templates(directory=str(_HERE / "templates"))
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@router.get("/admin", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    engine = getattr(getattr(request.app.state, "core", None), "engine", None)
    return templates.TemplateResponse(request, "admin.html", {
        "base_sha256": getattr(engine, "base_sha", ""),
        "base": request.app.state.settings.base_spec.to_json(),
        "max_n": request.app.state.settings.max_n,
    }, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self'; script-src 'self'; frame-ancestors 'none'"})


@router.get("/admin/static/{name}")
async def static(name: str = Path(..., pattern=r"^[a-z0-9_-]+\.(js|css|svg)$")) -> FileResponse:
    path = _STATIC / name  # the pattern allows no separator, so no way out of the folder
    if not path.is_file():
        raise NotFound(f"no static file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
