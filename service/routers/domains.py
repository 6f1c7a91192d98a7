"""Domains: name -> active mask, with history; promote, roll back, pin and delete (admin)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from service.auth import require_admin
from service.deps import get_engine, get_state
from service.engine import Engine
from service.errors import InvalidRequest, UnknownDomain
from service.openapi import ADMIN, errors
from service.state import AppState
from store.domains import DOMAIN_NAME
from trainer.masks import MASK_ID

router = APIRouter(tags=["domains"])

DomainName = Path(..., pattern=DOMAIN_NAME.pattern, description="1-64 of a-z 0-9 _ -")


class HistoryEntry(BaseModel):
    mask_id: str
    at: float | None = None  # unix time it became active
    by: str | None = None


class Domain(BaseModel):
    name: str
    mask_id: str | None
    pinned: bool = False  # weights kept resident on the device
    resident: bool = False  # the active mask's weights are on this replica's device now
    updated: float | None = None
    version: int = Field(0, description="grows with every change; 0 for a record older than versions")
    history: list[HistoryEntry] = []  # newest first; history[1] is what a rollback restores


class DomainDeleted(Domain):
    """The deleted record, with the deletion's `version`."""

    deleted: bool = True


class DomainUpdate(BaseModel):
    """Promote (or roll back to) `mask_id`, and/or set `pinned`; at least one of them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # optional but never null; strict, so `"pinned": 0` is an error, not False
    mask_id: StrictStr = Field(None, pattern=MASK_ID.pattern)  # type: ignore[assignment]
    pinned: StrictBool = Field(None)  # type: ignore[assignment]


def _view(engine: Engine, rec: dict) -> Domain:
    history = [HistoryEntry(**{k: h.get(k) for k in ("mask_id", "at", "by")})
               for h in rec.get("history", []) if isinstance(h, dict) and h.get("mask_id")]
    return Domain(name=rec["name"], mask_id=rec.get("mask_id"), pinned=bool(rec.get("pinned")),
                  resident=engine.is_resident(rec.get("mask_id")), updated=rec.get("updated"),
                  version=int(rec.get("version") or 0), history=history)


@router.get("/domains", response_model=list[Domain], summary="Every domain and its active mask",
            responses=errors(503))
async def list_domains(state: AppState = Depends(get_state),
                       engine: Engine = Depends(get_engine)) -> list[Domain]:
    recs = await asyncio.to_thread(state.domains.all)
    return [_view(engine, r) for r in recs]


@router.get("/domains/{name}", response_model=Domain, summary="One domain",
            responses=errors(404, 422, 503))
async def get_domain(name: str = DomainName, state: AppState = Depends(get_state),
                     engine: Engine = Depends(get_engine)) -> Domain:
    rec = await asyncio.to_thread(state.domains.get, name)
    if rec is None:
        raise UnknownDomain(name)
    return _view(engine, rec)


def _update(engine: Engine, name: str, body: DomainUpdate) -> dict:
    rec: dict = {}
    if body.mask_id is not None:
        # in the catalog, not deleted, verified for this base (UnknownMask, MaskError)
        rec = engine.promote(name, body.mask_id, "admin")
    if body.pinned is not None:
        rec = engine.mirror.set_pinned(name, body.pinned)
    return rec


@router.put("/domains/{name}", response_model=Domain, dependencies=[Depends(require_admin)],
            summary="Promote or roll back a domain's mask, or pin it (admin)",
            responses={**ADMIN, **errors(404, 409, 422, 503)})
async def update_domain(body: DomainUpdate, name: str = DomainName,
                     engine: Engine = Depends(get_engine)) -> Domain:
    """The next /generate request on any replica uses the new mask; no restart. 404 for a
    mask not in the catalog (never imported, or deleted: the answer says which), or for
    `pinned` alone on a domain that does not exist; 409 for a mask of
    another base; 422 for a mask file that does not fit the served base."""
    if body.mask_id is None and body.pinned is None:
        raise InvalidRequest("give `mask_id` and/or `pinned`")
    rec = await asyncio.to_thread(_update, engine, name, body)
    return _view(engine, rec)


@router.delete("/domains/{name}", response_model=DomainDeleted, dependencies=[Depends(require_admin)],
               summary="Delete a domain (admin); its masks stay in the catalog",
               responses={**ADMIN, **errors(404, 422, 503)})
async def delete_domain(name: str = DomainName, engine: Engine = Depends(get_engine)) -> DomainDeleted:
    """Every replica stops serving it at once (a versioned deletion, by pub/sub); answers the
    deleted record with the deletion's version."""
    rec = await asyncio.to_thread(engine.mirror.delete, name)
    return DomainDeleted(**_view(engine, rec).model_dump(), deleted=True)
