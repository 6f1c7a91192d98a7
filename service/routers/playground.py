"""The public playground at `/`: pick a domain, a seed and n, see the grid and a latent
interpolation strip, with a link that makes the same pixels again and the provenance the PNG
carries. One page and a script (served with the dashboard's static files); the page holds no
secret: on a private deployment (SLT_READ_TOKEN) it asks for a token, as the dashboard does."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.routers.admin import templates
from service.routers.generate import STEPS_LIMIT

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def playground(request: Request) -> HTMLResponse:
    settings = request.app.state.settings
    return templates.TemplateResponse(request, "playground.html", {
        "max_n": settings.max_n, "max_steps": min(STEPS_LIMIT, settings.max_n),
        "private": bool(settings.read_token),
    }, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self'; script-src 'self'; frame-ancestors 'none'"})
