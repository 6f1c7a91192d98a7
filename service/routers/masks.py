"""Mask catalog routes: list, metadata, file download, verified import.
(POST /masks, which launches a search, lives with the jobs routes.)"""
from __future__ import annotations

import asyncio
import math
from typing import Any

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile

from service.auth import require_admin
from service.deps import get_engine
from service.engine import Engine, UnknownMask
from service.openapi import ADMIN, errors
from trainer.masks import MASK_ID, MAX_FILE_BYTES, ForeignMaskError, MaskError

router = APIRouter(tags=["masks"])


class MaskRef(Convertor):
    """Any path segment but `import`, so GET /masks/import is a 405 (POST only), not a
    malformed mask id; malformed ids are still a 422 from the pattern below."""

    regex = "(?!import$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("mask_ref", MaskRef())

MaskId = Path(..., pattern=MASK_ID.pattern, description="sha256 of the mask file (64 hex digits)")


class MaskInfo(BaseModel):
    """A catalog mask: file metadata, mask statistics, evaluation results and serving state.
    Fields decoded from the file's metadata are shown as stored."""

    model_config = ConfigDict(extra="allow")

    mask_id: str
    bytes: int | None = None
    domain: str | None = None
    k: Any = None
    pruning: str | None = None
    init: str | None = None
    base_arch: Any = None
    base_seed: Any = None
    base_sha256: str | None = None
    dataset_sha256: str | None = None
    features: str | None = None
    objective: Any = Field(None, description=(
        'what the search optimised, e.g. {"name": "eq3", "reduction": "sum", "ama": true, ...} '
        '(the paper\'s Eq. 3) or {"name": "layer-normalised", "reduction": "layer-mean", ...}'))
    search_precision: str | None = None  # fp32, or bf16-autocast (CUDA); "none" for a random mask
    iterations: Any = None
    created: str | None = None
    metrics: Any = None
    evaluation: dict[str, dict[str, Any]] | None = Field(None, description=(
        'metrics by split, e.g. {"heldout": {"fid": 41.2, "kid": 0.031, "precision": 0.6, '
        '"recall": 0.4, "density": 0.8, "coverage": 0.5, "features": "inception-fid", "n": 2000, '
        '"split": "heldout", ...}}; written after a job (SLT_EVAL_N images) or by '
        '`python -m trainer evaluate --record`'))
    weights: int | None = None
    kept: int | None = None
    kept_fraction: float | None = None
    bits_per_weight: float | None = None
    served: bool = False  # fits the served base and is held in RAM
    resident: bool = False  # its weights are on the device now
    domains: list[str] = []  # domains whose active mask this is
    error: str | None = None  # set when the catalog file cannot be read


def finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities (a random mask's loss, say) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _info(engine: Engine, mask_id: str) -> dict:
    """A mask's info; an unreadable catalog file is reported in `error`, never a 500."""
    try:
        return finite(engine.mask_info(mask_id))
    except (MaskError, OSError, KeyError, ValueError) as e:
        return {"mask_id": mask_id, "error": str(e)}
    except Exception as e:  # a damaged file or sidecar the readers did not foresee
        return {"mask_id": mask_id, "error": f"{type(e).__name__}: {e}"}


def _list(engine: Engine) -> list[dict]:
    out = [_info(engine, m) for m in engine.state.catalog.ids()]
    return sorted(out, key=lambda i: str(i.get("created") or ""), reverse=True)


def _fetch(engine: Engine, mask_id: str) -> None:
    """Make sure the catalog holds `mask_id`, fetching it from Redis if another host made it."""
    if mask_id in engine.state.catalog:
        return
    try:
        engine.load_mask(mask_id)
    except UnknownMask:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no mask {mask_id}") from None
    except ForeignMaskError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, f"mask {mask_id} is for another base: {e}") from None
    except MaskError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"mask {mask_id} is unusable here: {e}") from None
    except redis.RedisError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Redis is unreachable",
                            headers={"Retry-After": "1"}) from None


@router.get("/masks", response_model=list[MaskInfo], summary="Every catalog mask, newest first")
async def list_masks(engine: Engine = Depends(get_engine)) -> list[dict]:
    return await asyncio.to_thread(_list, engine)


@router.get("/masks/{mask_id:mask_ref}", response_model=MaskInfo, summary="One mask's metadata and metrics",
            responses=errors(404, 409, 422, 503))
async def get_mask(mask_id: str = MaskId, engine: Engine = Depends(get_engine)) -> dict:
    await asyncio.to_thread(_fetch, engine, mask_id)
    return await asyncio.to_thread(_info, engine, mask_id)


@router.get("/masks/{mask_id:mask_ref}/file", summary="The mask file (safetensors)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream":
                                         {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the file; its sha256 is the mask_id"},
                       **errors(404, 409, 422, 503)})
async def get_mask_file(mask_id: str = MaskId, engine: Engine = Depends(get_engine)) -> Response:
    await asyncio.to_thread(_fetch, engine, mask_id)
    try:
        data = await asyncio.to_thread(engine.state.catalog.bytes, mask_id)
    except (OSError, KeyError):  # removed from the catalog meanwhile
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no mask {mask_id}") from None
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{mask_id}.safetensors"',
        "ETag": f'"{mask_id}"', "Cache-Control": "public, max-age=31536000, immutable"})


_UPLOAD = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "additionalProperties": False,
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "a mask file (safetensors, slt-mask/1)"}}}}}}}


@router.post("/masks/import", response_model=MaskInfo, status_code=status.HTTP_201_CREATED,
             summary="Import a mask searched elsewhere (admin)", dependencies=[Depends(require_admin)],
             openapi_extra=_UPLOAD, responses={200: {"model": MaskInfo, "description": "already known"},
                                               **ADMIN, **errors(400, 409, 413, 422, 503)})
async def import_mask(request: Request, response: Response,
                      engine: Engine = Depends(get_engine)) -> dict:
    """Verified before it enters the catalog: size, format, and the served base's sha256."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_FILE_BYTES + (1 << 20):
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"a mask file is at most {MAX_FILE_BYTES} bytes")
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "send the mask as multipart/form-data with a `file` field")
    data = await upload.read(MAX_FILE_BYTES + 1)
    await form.close()
    if len(data) > MAX_FILE_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"a mask file is at most {MAX_FILE_BYTES} bytes")
    if not data:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the uploaded file is empty")
    try:
        mask, existed = await asyncio.to_thread(engine.import_mask, data)
    except ForeignMaskError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, f"mask refused: {e}") from None
    except MaskError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"not a usable mask file: {e}") from None
    except redis.RedisError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Redis is unreachable",
                            headers={"Retry-After": "1"}) from None
    response.headers["Location"] = f"/masks/{mask.mask_id}"
    if existed:
        response.status_code = status.HTTP_200_OK
    return await asyncio.to_thread(_info, engine, mask.mask_id)
