"""GET /generate: images of a domain, reproducible from (mask, seed, index); GET /interpolate: a
strip of images along the path between two seeds' latents."""
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
from pydantic import BaseModel, Field

from service.deps import get_engine
from service.engine import Engine, Generation
from service.errors import InvalidRequest
from service.openapi import errors
from store.domains import DOMAIN_NAME
from trainer.generator import latents
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


STEPS_LIMIT = 64  # images in one interpolation strip, also at most SLT_MAX_N


class InterpolationProvenance(BaseModel):
    """Everything needed to make this strip again."""

    domain: str
    mask_id: str
    base_sha256: str
    seed: int
    seed_to: int
    index: int
    steps: int
    method: str = Field("slerp", description="spherical interpolation of the two latents")
    t: list[float] = Field(description="the position of each image on the path, 0 (seed) to 1 (seed_to)")


class InterpolateResponse(BaseModel):
    """format=json: one base64 PNG per image, in `provenance.t` order."""

    images: list[str]
    provenance: InterpolationProvenance


def positions(steps: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, steps)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation of a and b [nz] at each t: [len(t), nz] float64. The latents are
    standard Gaussian, so in nz dimensions they lie near the sphere of radius sqrt(nz); a straight
    line between two of them passes well inside it (norm ~ sqrt(nz/2) halfway), where the
    generator was never trained, and its middle images wash out. Slerp follows the great circle,
    so every point has a typical norm; t=0 and t=1 give a and b exactly."""
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-8:  # (anti)parallel: the circle is not defined, the line is as good
        return (1.0 - t)[:, None] * a + t[:, None] * b
    return (np.sin((1.0 - t) * omega)[:, None] * a + np.sin(t * omega)[:, None] * b) / np.sin(omega)


def interpolation_latents(seed: int, seed_to: int, index: int, steps: int, nz: int) -> np.ndarray:
    """float32 [steps, nz]: from latents(seed, index) to latents(seed_to, index), so the first
    and last images are image `index` of /generate at those seeds."""
    a = latents(seed, index, 1, nz)[0].numpy().astype(np.float64)
    b = latents(seed_to, index, 1, nz)[0].numpy().astype(np.float64)
    return slerp(a, b, positions(steps)).astype(np.float32)


def encode_strip(gen: Generation, seed_to: int, index: int, fmt: ImageFormat) -> tuple[bytes, str]:
    """The strip (one row) as PNG, lossless WebP or JSON (CPU work: off the event loop)."""
    steps = len(gen.images)
    text = {"domain": gen.domain, "mask_id": gen.mask_id, "base_sha256": gen.base_sha256,
            "seed": str(gen.seed), "seed_to": str(seed_to), "index": str(index),
            "steps": str(steps), "interpolation": "slerp"}
    if fmt is ImageFormat.json:
        t = [float(x) for x in positions(steps)]
        images = [base64.b64encode(_png(Image.fromarray(im), {**text, "t": repr(x)})).decode()
                  for im, x in zip(gen.images, t)]
        body = InterpolateResponse(images=images, provenance=InterpolationProvenance(
            domain=gen.domain, mask_id=gen.mask_id, base_sha256=gen.base_sha256, seed=gen.seed,
            seed_to=seed_to, index=index, steps=steps, t=t))
        return body.model_dump_json().encode(), "application/json"
    img = grid(np.asarray(gen.images), nrow=steps)
    if fmt is ImageFormat.webp:
        buf = io.BytesIO()
        img.save(buf, format="WEBP", lossless=True, quality=100, method=4)
        return buf.getvalue(), "image/webp"
    return _png(img, text), "image/png"


@router.get(
    "/interpolate",
    response_model=InterpolateResponse,
    summary="A strip of images between two seeds",
    responses={200: {"description": "A PNG strip (one row), a lossless WebP, or JSON",
                     "content": {"image/png": _IMAGE, "image/webp": _IMAGE}},
               **errors(404, 409, 422, 429, 503)},
)
async def interpolate(
    request: Request,
    domain: str = Query(..., pattern=DOMAIN_NAME.pattern, description="domain name (GET /domains)"),
    seed: int = Query(..., ge=0, le=SEED_MAX, description="the strip starts at this seed's latent"),
    seed_to: int = Query(..., ge=0, le=SEED_MAX, description="and ends at this seed's latent"),
    steps: int = Query(8, ge=2, le=STEPS_LIMIT, description="images on the way, both ends "
                                                            "included; at most SLT_MAX_N"),
    index: int = Query(0, ge=0, le=N_LIMIT - 1, description="which image of each seed: the ends "
                                                          "are image `index` of /generate"),
    format: ImageFormat = Query(ImageFormat.png),
    engine: Engine = Depends(get_engine),
) -> Response:
    """Image k is made from slerp(latents(seed, index), latents(seed_to, index), k/(steps-1))
    under the domain's active mask: the same query gives the same bytes, and the first and last
    images are the pixels of /generate's image `index` at `seed` and `seed_to`. PNGs carry
    domain, mask_id, base_sha256, seed, seed_to, index, steps and `interpolation=slerp` as text
    chunks. Errors as /generate's."""
    max_n = request.app.state.settings.max_n
    if steps > max_n:
        raise InvalidRequest(f"steps: at most {max_n} images per request")
    z = await asyncio.to_thread(interpolation_latents, seed, seed_to, index, steps, engine.spec.nz)
    t0 = time.perf_counter()
    gen = await engine.generate(domain, seed, steps, z=z)
    body, media = await asyncio.to_thread(encode_strip, gen, seed_to, index, format)
    engine.metrics.request_seconds.labels(domain).observe(time.perf_counter() - t0)
    return Response(body, media_type=media, headers={
        "X-Domain": gen.domain, "X-Mask-Id": gen.mask_id, "X-Base-Sha256": gen.base_sha256,
        "Cache-Control": "no-store"})
