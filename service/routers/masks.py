"""Mask catalog routes: list, metadata, file download, verified import, delete.
(POST /masks, which launches a search, lives with the jobs routes.)"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile

from service.auth import require_admin
from service.deps import get_engine, get_state
from service.engine import Engine
from service.errors import InvalidRequest, TooLarge, UnknownMask
from service.mask_views import domains_by_mask, mask_view
from service.model_card import render
from service.openapi import ADMIN, errors
from service.state import AppState
from store.catalog import SharedCatalog
from trainer.masks import MASK_ID, MAX_FILE_BYTES

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
    provenance: dict[str, Any] | None = Field(None, description=(
        "how its job made it (job_id, dataset name, preset, config, search_seconds, device, "
        "finished), recorded by the worker; absent for an imported mask"))
    weights: int | None = None
    kept: int | None = None
    kept_fraction: float | None = None
    bits_per_weight: float | None = None
    served: bool = False  # this replica serves it: made for the served base, not refused
    resident: bool = False  # its weights are on the device now
    domains: list[str] = []  # domains whose active mask this is
    error: str | None = None  # why this replica refused it


class DomainChange(BaseModel):
    name: str
    mask_id: str | None = Field(None, description="its active mask now; null if it was deleted")
    deleted: bool = False
    version: int


class MaskDeleted(BaseModel):
    """What DELETE /masks/{mask_id} removed: the catalog entry (index, blob, files) and, when
    forced, the mask from every domain (a domain serving it rolled back, or was deleted)."""

    mask_id: str
    deleted: bool = Field(description="it was in the catalog and is not any more")
    domains: list[DomainChange] = Field([], description="domains changed by a forced delete")


def _one(engine: Engine, catalog: SharedCatalog, mask_id: str) -> dict:
    entry = catalog.entry(mask_id)
    if entry is None:
        raise UnknownMask(mask_id)
    return mask_view(entry, engine.base_sha, domains_by_mask(engine.domains_view()).get(mask_id, []),
                     engine.is_resident(mask_id), engine.masks.refusal(mask_id))


def _list(engine: Engine, catalog: SharedCatalog, offset: int, limit: int) -> list[dict]:
    users = domains_by_mask(engine.domains_view())
    entries = catalog.entries(catalog.ids(offset, limit))
    return [mask_view(e, engine.base_sha, users.get(e["mask_id"], []),
                      engine.is_resident(e["mask_id"]), engine.masks.refusal(e["mask_id"]))
            for e in entries if e is not None]


@router.get("/masks", response_model=list[MaskInfo], summary="Catalog masks, newest first",
            responses=errors(422, 503))
async def list_masks(offset: int = Query(0, ge=0, le=2**62, description="skip this many of the newest"),
                     limit: int = Query(1000, ge=1, le=10_000),
                     state: AppState = Depends(get_state),
                     engine: Engine = Depends(get_engine)) -> list[dict]:
    """From the shared index, so every replica lists the same masks with their evaluations."""
    return await asyncio.to_thread(_list, engine, state.catalog, offset, limit)


@router.get("/masks/{mask_id:mask_ref}", response_model=MaskInfo, summary="One mask's metadata and metrics",
            responses=errors(404, 422, 503))
async def get_mask(mask_id: str = MaskId, state: AppState = Depends(get_state),
                   engine: Engine = Depends(get_engine)) -> dict:
    return await asyncio.to_thread(_one, engine, state.catalog, mask_id)


@router.get("/masks/{mask_id:mask_ref}/file", summary="The mask file (safetensors)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream":
                                         {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the file; its sha256 is the mask_id"},
                       **errors(404, 422, 503)})
async def get_mask_file(mask_id: str = MaskId, engine: Engine = Depends(get_engine)) -> Response:
    data = await asyncio.to_thread(engine.masks.file, mask_id)
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{mask_id}.safetensors"',
        "ETag": f'"{mask_id}"', "Cache-Control": "public, max-age=31536000, immutable"})


def _card(catalog: SharedCatalog, mask_id: str, license: str) -> str:
    entry = catalog.entry(mask_id)
    if entry is None:
        raise UnknownMask(mask_id)
    return render(entry, license)


@router.get("/masks/{mask_id:mask_ref}/card", summary="The mask's model card (README.md of its bundle)",
            response_class=Response,
            responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}},
                             "description": "Markdown with YAML front matter (Hugging Face Hub style)"},
                       **errors(404, 422, 503)})
async def get_mask_card(request: Request, mask_id: str = MaskId,
                        state: AppState = Depends(get_state)) -> Response:
    """A bundle is this card as `README.md` beside the file of GET /masks/{mask_id}/file, saved
    as `<mask_id>.safetensors` (`slt export`). The front matter holds license, tags, dataset and
    metrics, and an `slt` block (mask id, file sha256, base, dataset sha256) that `slt import`
    checks against the file; the body the base, dataset, exact search request and settings,
    search time and device, and the metrics with n and split."""
    text = await asyncio.to_thread(_card, state.catalog, mask_id, request.app.state.settings.card_license)
    return Response(text, media_type="text/markdown; charset=utf-8", headers={
        "Content-Disposition": 'inline; filename="README.md"',
        "Cache-Control": "no-cache"})


def _delete(engine: Engine, catalog: SharedCatalog, mask_id: str, force: bool) -> MaskDeleted:
    if mask_id not in catalog:
        raise UnknownMask(mask_id)
    changed = engine.mirror.release_mask(mask_id, force)  # InUse unless forced
    deleted = catalog.delete(mask_id)  # tombstoned, announced: every replica drops its copies
    # a promotion that committed between the check and the tombstone loses: the mask is gone
    changed += engine.mirror.release_mask(mask_id, force=True)
    engine.forget_mask(mask_id)
    return MaskDeleted(mask_id=mask_id, deleted=deleted, domains=[
        DomainChange(name=r["name"], mask_id=None if r.get("deleted") else r.get("mask_id"),
                     deleted=bool(r.get("deleted")), version=int(r.get("version") or 0))
        for r in changed])


@router.delete("/masks/{mask_id:mask_ref}", response_model=MaskDeleted,
               dependencies=[Depends(require_admin)], summary="Delete a mask everywhere (admin)",
               responses={**ADMIN, **errors(404, 409, 422, 503)})
async def delete_mask(mask_id: str = MaskId,
                      force: bool = Query(False, description=(
                          "also when domains serve it or may roll back to it: each loses it from "
                          "its history; one serving it rolls back to its newest other mask, or is "
                          "deleted if it has none")),
                      state: AppState = Depends(get_state),
                      engine: Engine = Depends(get_engine)) -> MaskDeleted:
    """Its index entry, blob and every replica's file. Without `force`, a 409 names the domains
    that serve it or have it in their history. The deletion is kept as a tombstone: a replica
    that was down drops its copy when it starts, and nothing publishes the mask again but an
    admin's POST /masks/import of its file."""
    return await asyncio.to_thread(_delete, engine, state.catalog, mask_id, force)


_UPLOAD = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "additionalProperties": False,
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "a mask file (safetensors, slt-mask/1)"}}}}}}}


@router.post("/masks/import", response_model=MaskInfo, status_code=status.HTTP_201_CREATED,
             summary="Import a mask searched elsewhere (admin)", dependencies=[Depends(require_admin)],
             openapi_extra=_UPLOAD, responses={200: {"model": MaskInfo, "description": "already known"},
                                               **ADMIN, **errors(400, 409, 413, 422, 503)})
async def import_mask(request: Request, response: Response, state: AppState = Depends(get_state),
                      engine: Engine = Depends(get_engine)) -> dict:
    """Verified before it enters the catalog: size, format, and the served base's sha256. An
    explicit act: importing a deleted mask's file brings it back (lifts its tombstone)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_FILE_BYTES + (1 << 20):
        raise TooLarge(f"a mask file is at most {MAX_FILE_BYTES} bytes")
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("send the mask as multipart/form-data with a `file` field")
    data = await upload.read(MAX_FILE_BYTES + 1)
    await form.close()
    if len(data) > MAX_FILE_BYTES:
        raise TooLarge(f"a mask file is at most {MAX_FILE_BYTES} bytes")
    if not data:
        raise InvalidRequest("the uploaded file is empty")
    mask, existed = await asyncio.to_thread(engine.import_mask, data)
    response.headers["Location"] = f"/masks/{mask.mask_id}"
    if existed:
        response.status_code = status.HTTP_200_OK
    return await asyncio.to_thread(_one, engine, state.catalog, mask.mask_id)
