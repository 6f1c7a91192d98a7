"""Domains: name -> active mask, with history; promote, roll back and pin (admin)."""
from __future__ import annotations

import asyncio

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from service.auth import require_admin
from service.deps import get_engine, get_state
from service.engine import Engine, UnknownMask
from service.openapi import ADMIN, errors
from service.state import AppState
from store.domains import DOMAIN_NAME
from trainer.masks import MASK_ID, ForeignMaskError, MaskError

router = APIRouter(tags=["domains"])

DomainName = Path(..., pattern=DOMAIN_NAME.pattern, description="1-64 of a-z 0-9 _ -")
_REDIS_DOWN = HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Redis is unreachable",
                            headers={"Retry-After": "1"})


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
    history: list[HistoryEntry] = []  # newest first; history[1] is what a rollback restores


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
                  history=history)


@router.get("/domains", response_model=list[Domain], summary="Every domain and its active mask",
            responses=errors(503))
async def list_domains(state: AppState = Depends(get_state),
                       engine: Engine = Depends(get_engine)) -> list[Domain]:
    try:
        recs = await asyncio.to_thread(state.domains.all)
    except redis.RedisError:
        raise _REDIS_DOWN from None
    return [_view(engine, r) for r in recs]


@router.get("/domains/{name}", response_model=Domain, summary="One domain",
            responses=errors(404, 422, 503))
async def get_domain(name: str = DomainName, state: AppState = Depends(get_state),
                     engine: Engine = Depends(get_engine)) -> Domain:
    try:
        rec = await asyncio.to_thread(state.domains.get, name)
    except redis.RedisError:
        raise _REDIS_DOWN from None
    if rec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown domain {name!r}")
    return _view(engine, rec)


@router.put("/domains/{name}", response_model=Domain, dependencies=[Depends(require_admin)],
            summary="Promote or roll back a domain's mask, or pin it (admin)",
            responses={**ADMIN, **errors(404, 409, 422, 503)})
async def put_domain(body: DomainUpdate, name: str = DomainName,
                     state: AppState = Depends(get_state),
                     engine: Engine = Depends(get_engine)) -> Domain:
    """The next /generate request on any replica uses the new mask; no restart."""
    if body.mask_id is None and body.pinned is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give `mask_id` and/or `pinned`")
    try:
        rec = None
        if body.mask_id is not None:
            await asyncio.to_thread(engine.load_mask, body.mask_id)  # verified before promotion
            rec = await asyncio.to_thread(state.domains.promote, name, body.mask_id, "admin")
        if body.pinned is not None:
            rec = await asyncio.to_thread(state.domains.set_pinned, name, body.pinned)
    except UnknownMask:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown mask {body.mask_id}") from None
    except ForeignMaskError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, f"mask refused: {e}") from None
    except MaskError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"mask refused: {e}") from None
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"unknown domain {name!r}; give a mask_id to create it") from None
    except redis.RedisError:
        raise _REDIS_DOWN from None
    engine.apply(rec)  # this replica at once; the others by pub/sub
    return _view(engine, rec)
