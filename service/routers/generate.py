"""GET /generate: images of a domain, reproducible from (mask, seed, index)."""
from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
from enum import StrEnum

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from PIL import Image, PngImagePlugin
from pydantic import BaseModel

from service.deps import get_engine
from service.engine import Engine, Generation
from service.errors import InvalidRequest
from service.openapi import errors
from store.domains import DOMAIN_NAME
from trainer.ticket import grid

router = APIRouter(tags=["generate"])

N_LIMIT = 4096  # hard schema ceiling; the served bound is SLT_MAX_N
SEED_MAX = 2**63 - 1
DRAWN_SEEDS = 2**32  # drawn seeds stay exact in JavaScript numbers


class ImageFormat(StrEnum):
    png = "png"
    webp = "webp"
    json = "json"


class Provenance(BaseModel):
    """Everything needed to make these images again."""

    domain: str
    mask_id: str
    base_sha256: str
    seed: int
    indices: list[int]


class GenerateResponse(BaseModel):
    """format=json: one base64 PNG per image, in `provenance.indices` order."""

    seed: int
    images: list[str]
    provenance: Provenance


_IMAGE = {"schema": {"type": "string", "format": "binary"}}


def _png(img: Image.Image, text: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _text(gen: Generation, indices: list[int]) -> dict[str, str]:
    return {"domain": gen.domain, "mask_id": gen.mask_id, "base_sha256": gen.base_sha256,
            "seed": str(gen.seed), "index": ",".join(str(i) for i in indices)}


def encode(gen: Generation, fmt: ImageFormat) -> tuple[bytes, str]:
    """The response body and its media type (CPU work: run it off the event loop)."""
    if fmt is ImageFormat.json:
        images = [base64.b64encode(_png(Image.fromarray(im), _text(gen, [i]))).decode()
                  for i, im in zip(gen.indices, gen.images)]
        body = GenerateResponse(seed=gen.seed, images=images, provenance=Provenance(
            domain=gen.domain, mask_id=gen.mask_id, base_sha256=gen.base_sha256,
            seed=gen.seed, indices=gen.indices))
        return body.model_dump_json().encode(), "application/json"
    img = Image.fromarray(gen.images[0]) if len(gen.images) == 1 else grid(np.asarray(gen.images))
    if fmt is ImageFormat.webp:  # lossless, so the pixels are the PNG's
        buf = io.BytesIO()
        img.save(buf, format="WEBP", lossless=True, quality=100, method=4)
        return buf.getvalue(), "image/webp"
    return _png(img, _text(gen, gen.indices)), "image/png"


@router.get(
    "/generate",
    response_model=GenerateResponse,
    summary="Images of a domain",
    responses={200: {"description": "A PNG (a grid when n > 1), a lossless WebP, or JSON",
                     "content": {"image/png": _IMAGE, "image/webp": _IMAGE},
                     "headers": {"X-Seed": {"description": "the seed used (drawn when not given)",
                                            "schema": {"type": "integer"}}}},
               **errors(404, 409, 422, 429, 503)},
)
async def generate_images(
    request: Request,
    domain: str = Query(..., pattern=DOMAIN_NAME.pattern, description="domain name (GET /domains)"),
    n: int = Query(1, ge=1, le=N_LIMIT, description="images, at most SLT_MAX_N (default 64); "
                                                  "n > 1 gives one grid picture"),
    seed: int | None = Query(None, ge=0, le=SEED_MAX, description="omit to have one drawn"),
    format: ImageFormat = Query(ImageFormat.png),
    engine: Engine = Depends(get_engine),
) -> Response:
    """Image i is made from (mask, seed, i) alone: the same mask, seed and n give the same pixels,
    whatever else is being generated. PNGs carry domain, mask_id, base_sha256, seed and index as
    text chunks; every format returns the seed in `X-Seed`. 404: unknown domain; 409: its mask
    is for another base; 429: queue full; 503: its mask unavailable here, Redis unreachable for
    a domain this replica does not know yet, or the generator not running."""
    max_n = request.app.state.settings.max_n
    if n > max_n:
        raise InvalidRequest(f"n: at most {max_n} images per request")
    if seed is None:
        seed = secrets.randbelow(DRAWN_SEEDS)
    t0 = time.perf_counter()
    gen = await engine.generate(domain, seed, n)
    body, media = await asyncio.to_thread(encode, gen, format)
    engine.metrics.request_seconds.labels(domain).observe(time.perf_counter() - t0)
    engine.generated_ok = True
    return Response(body, media_type=media, headers={
        "X-Seed": str(seed), "X-Domain": gen.domain, "X-Mask-Id": gen.mask_id,
        "X-Base-Sha256": gen.base_sha256, "Cache-Control": "no-store"})
