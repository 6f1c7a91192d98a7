"""Search jobs: `POST /masks` starts one (admin), `GET /jobs` follows them, `DELETE` cancels."""
from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema, field_validator

from service.auth import require_admin
from service.deps import get_state
from service.errors import Conflict, InvalidRequest, NotFound
from service.events import END_ID, follow
from service.jobs import JobQueue
from service.openapi import ADMIN, errors
from service.state import AppState
from store.domains import DOMAIN_NAME, check_domain_name
from store.job_events import JobEvents
from store.jobs import STATUSES
from store.settings import DATASET_NAME, DATASET_NAME_MAX, check_dataset_name
from trainer.search import PRESETS

router = APIRouter(tags=["jobs"])

JOB_ID = r"^[0-9a-f]{32}$"
JobId = Path(..., pattern=JOB_ID, description="as returned by POST /masks")


# Each point as a 2-item array, described without `prefixItems` (which schemathesis mishandles,
# its bug #3842); the JSON is the same `[[iteration, loss], ...]`.
LOSSES_SCHEMA = {"anyOf": [{"type": "array", "items": {
    "type": "array", "minItems": 2, "maxItems": 2,
    "items": {"anyOf": [{"type": "number"}, {"type": "null"}]}}}, {"type": "null"}]}


class SearchOverrides(BaseModel):
    """Search settings; each optional, overriding the preset's."""

    model_config = ConfigDict(extra="forbid")

    k: float | None = Field(None, gt=0, le=1, description="fraction of weights KEPT (the paper's k)")
    iterations: int | None = Field(None, ge=1, le=2_000_000)
    batch_size: int | None = Field(None, ge=2, le=256)
    pruning: Literal["local", "global", "gradual"] | None = None
    seed: int | None = Field(None, ge=0, lt=2**31, description="seeds scores and latents, never the base")
    lr: float | None = Field(None, gt=0, le=1)


class MaskJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the patterns are checked by the validators below (clearer messages) and published in the schema
    domain: str = Field(..., description="the domain the mask is for",
                        json_schema_extra={"pattern": DOMAIN_NAME.pattern})
    dataset: str = Field(..., description="a dataset name from GET /datasets (never a path)",
                         json_schema_extra={"pattern": DATASET_NAME.pattern, "maxLength": DATASET_NAME_MAX})
    preset: Literal[tuple(PRESETS)] | None = Field(  # type: ignore[valid-type]
        None, description="named settings the config overrides (default SLT_DEFAULT_PRESET, 'fast'); "
                          "'demo' finishes in minutes on a CPU, 'paper' is the published 2M-step run")
    config: SearchOverrides = SearchOverrides()
    promote: StrictBool = Field(True, description="make the mask the domain's active one when it is done")

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_domain_name(v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_dataset_name(v)


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"]


class Job(BaseModel):
    job_id: str
    domain: str
    dataset: str
    status: Literal[STATUSES]  # type: ignore[valid-type]
    progress: float = Field(description="0..1")
    iteration: int
    iterations: int
    loss: float | None = None
    lr: float | None = None
    eta_s: float | None = None
    mask_id: str | None = None
    error: str | None = None
    note: str | None = Field(None, description="what happened to the job, e.g. resumed after its worker was lost")
    phase: str | None = Field(None, description="what a running job does now: fetching or hashing its "
                                                "dataset, fetching a checkpoint, loading the extractor, searching")
    failures: int = Field(0, description="failures counted toward SLT_MAX_ATTEMPTS (cleared once the "
                                         "job gets past the iteration of the last one)")
    preset: str | None = None
    config: dict = Field(description="the exact search settings")
    promote: bool
    created: float
    started: float | None = None
    finished: float | None = None
    attempts: int = Field(description="times a worker started (or resumed) it")
    resumed_from: int | None = Field(None, description="iteration of the checkpoint the last attempt resumed")
    cancel_requested: bool = False
    preview: str | None = Field(None, description="URL of the latest preview grid (PNG)")
    losses: Annotated[list[tuple[int, float | None]] | None, WithJsonSchema(LOSSES_SCHEMA)] = Field(
        None, description="recent [iteration, loss] points; in GET /jobs/{job_id} only")


async def get_jobs(state: AppState = Depends(get_state)) -> JobQueue:
    return state.jobs


def _view(job: dict, losses: list | None = None) -> Job:
    preview = f"/jobs/{job['job_id']}/preview" if job.get("preview_iteration") else None
    return Job.model_validate({**job, "preview": preview, "losses": losses})


@router.post("/masks", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted,
             dependencies=[Depends(require_admin)], summary="Search a mask for a domain (a job)",
             responses={**ADMIN, **errors(404, 422, 503)})
def submit_search(body: MaskJobRequest, response: Response, state: AppState = Depends(get_state)) -> JobAccepted:
    jobs = state.jobs
    # this host's datasets, or one uploaded through another replica (a worker fetches it)
    if not jobs.settings.dataset_path(body.dataset).exists() and state.datasets.get(body.dataset) is None:
        raise NotFound(f"dataset {body.dataset!r} not found; GET /datasets lists them")
    try:
        job = jobs.submit(domain=body.domain, dataset=body.dataset, preset=body.preset,
                          overrides=body.config.model_dump(exclude_none=True), promote=body.promote)
    except ValueError as e:  # settings that pass one by one but not together (route-specific)
        raise InvalidRequest(str(e)) from None
    response.headers["Location"] = f"/jobs/{job['job_id']}"
    return JobAccepted(job_id=job["job_id"], status="queued")


@router.get("/jobs", response_model=list[Job], response_model_exclude_none=False,
            summary="Jobs, newest first", responses=errors(422, 503))
def list_jobs(status_: Literal[STATUSES] | None = Query(None, alias="status"),  # type: ignore[valid-type]
              limit: int = Query(100, ge=1, le=1000),
              jobs: JobQueue = Depends(get_jobs)) -> list[Job]:
    return [_view(j) for j in jobs.store.list(status_, limit)]


@router.get("/jobs/{job_id}", response_model=Job, summary="One job, with its recent loss curve",
            responses=errors(404, 422, 503))
def get_job(job_id: str = JobId, jobs: JobQueue = Depends(get_jobs)) -> Job:
    job = jobs.store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return _view(job, jobs.store.losses(job_id))


@router.get("/jobs/{job_id}/preview", summary="The job's latest preview grid",
            responses={200: {"content": {"image/png": {}}}, **errors(404, 422, 503)})
def get_job_preview(job_id: str = JobId, jobs: JobQueue = Depends(get_jobs)) -> Response:
    png = jobs.store.preview(job_id)
    if png is None:
        raise NotFound(f"no preview for job {job_id} (yet)")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


EVENTS_DOC = """`text/event-stream`, each event with an `id:`. Without `Last-Event-ID`: first
`job` (the record, as GET /jobs/{job_id}); with it: the events after that id still kept. Then
`phase` (`{"phase"}`) and `progress` (`{"iteration", "iterations", "progress", "loss", "lr",
"eta_s", "preview_iteration"}`, `preview_iteration` when a new preview is at
/jobs/{job_id}/preview) as the worker writes them, and last `end` (id `end`: `{"status",
"mask_id", "error", "note", "iteration", "iterations", "progress", "finished"}`), then the stream closes.
Comment lines keep an idle stream open; a stream also closes after SLT_EVENTS_MAX_S (resume
with Last-Event-ID). `Last-Event-ID: end` answers 204 (nothing more). Served by any replica."""
LAST_EVENT_ID = r"^([0-9]{1,20}-[0-9]{1,20}|end)$"
# One parsed event (OpenAPI 3.1 has no itemSchema; tools read `schema` as the per-event one):
# its `data` is a JSON object encoded as text, described by the description above.
EVENT_SCHEMA = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["job", "phase", "progress", "end"]},
    "data": {"type": "string", "contentMediaType": "application/json"},
    "id": {"type": "string"}, "retry": {"type": "integer"}}}


@router.get("/jobs/{job_id}/events", summary="Follow a job live (Server-Sent Events)",
            description=EVENTS_DOC, response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
                             "description": "the event stream"},
                       204: {"description": "resumed after the `end` event: nothing more"},
                       **errors(404, 422, 503)})
async def follow_job_events(
    request: Request, job_id: str = JobId,
    # `str`, not `str | None`: a header is absent or a string, never null in the schema
    last_event_id: str = Header(None, pattern=LAST_EVENT_ID,  # type: ignore[assignment]
                                       description="resume after this event (what the stream sent)"),
    jobs: JobQueue = Depends(get_jobs),
) -> Response:
    if await asyncio.to_thread(jobs.store.r.exists, jobs.store.key(job_id)) == 0:
        raise NotFound(f"no job {job_id}")
    if last_event_id == END_ID:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    settings = request.app.state.settings
    body = follow(request, JobEvents(jobs.store.r), job_id, last_event_id, settings,
                  lambda job: _view(job).model_dump(mode="json"))
    return StreamingResponse(body, media_type="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # nginx: pass events through at once


@router.delete("/jobs/{job_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Job,
               dependencies=[Depends(require_admin)],
               summary="Cancel a job: a queued one at once, a running one at its next iteration",
               responses={**ADMIN, **errors(404, 409, 422, 503)})
def cancel_job(job_id: str = JobId, jobs: JobQueue = Depends(get_jobs)) -> Job:
    outcome = jobs.cancel(job_id)
    if outcome == "missing":
        raise NotFound(f"no job {job_id}")
    job = jobs.store.get(job_id)
    if outcome == "finished":
        raise Conflict(f"job {job_id} already {job['status']}")
    return _view(job)
