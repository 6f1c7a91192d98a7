"""Datasets: `GET /datasets` lists them, `POST /datasets` (admin) installs an uploaded archive."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from service.auth import require_admin
from service.datasets import list_datasets as local_datasets
from service.deps import get_state
from service.jobs import BROKER_ERRORS
from service.openapi import ADMIN, errors
from service.state import AppState
from service.uploads import (
    UPLOAD_PREFIX,
    Limits,
    UploadError,
    clean_stale_uploads,
    install_upload,
    receive_form,
)
from store.faults import StoreUnavailable
from store.settings import DATASET_NAME, DATASET_NAME_MAX, check_dataset_name

log = logging.getLogger(__name__)
router = APIRouter(tags=["datasets"])


class Dataset(BaseModel):
    name: str
    format: str | None = None  # folder | zip | celeba | lsun | cifar10-bin | cifar10-py
    images: int
    skipped: int = 0  # images found unreadable so far
    error: str | None = None  # why it cannot be opened
    local: bool = Field(True, description="on this host's disk (else fetched by a worker when a search needs it)")
    shared: bool = Field(False, description="in the shared store: every host can search it")
    sha256: str | None = Field(None, description="of its shared copy")
    bytes: int | None = Field(None, description="of its shared copy")


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["name", "file"],
    "properties": {"name": {"type": "string", "pattern": DATASET_NAME.pattern,
                            "maxLength": DATASET_NAME_MAX, "description": "the new dataset's name"},
                   "file": {"type": "string", "format": "binary",
                            "description": "a .zip or .tar(.gz) of images"}}}}}}}


def _merged(local: list[dict], shared: list[dict]) -> list[dict]:
    """This host's datasets and the shared ones (uploaded through any replica), by name."""
    out = {d["name"]: {**d, "local": True, "shared": False} for d in local}
    for m in shared:
        name = m.get("name")
        if not name:
            continue
        mine = out.get(name)
        extra = {"shared": True, "sha256": m.get("sha256"), "bytes": m.get("bytes")}
        if mine is not None:
            mine.update(extra)
        else:
            out[name] = {"name": name, "format": m.get("format"), "images": m.get("images") or 0,
                         "local": False, **extra}
    return [out[n] for n in sorted(out)]


@router.get("/datasets", response_model=list[Dataset], summary="The datasets searches can use",
            responses=errors(503))
def list_datasets(state: AppState = Depends(get_state)) -> list[dict]:
    """This host's datasets plus those uploaded through any replica (the shared store)."""
    return _merged(local_datasets(state.settings.datasets_dir), state.datasets.list())


@router.post("/datasets", status_code=status.HTTP_201_CREATED, response_model=Dataset,
             dependencies=[Depends(require_admin)], openapi_extra=_UPLOAD_BODY,
             summary="Upload a .zip or .tar(.gz) of images as a new dataset",
             responses={**ADMIN, **errors(400, 409, 413, 415, 422, 503, 507)})
async def upload_dataset(request: Request, state: AppState = Depends(get_state)) -> dict:
    s = state.settings
    datasets_dir = s.datasets_dir
    datasets_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_uploads(datasets_dir)

    def check_field(key: str, value: str) -> None:  # fails before the file is read when `name` comes first
        if key == "name":
            _check_new_name(datasets_dir, value)

    work = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=datasets_dir))
    try:
        fields, has_file = await receive_form(request, work / "upload", s.max_upload_bytes, check_field)
        name = fields.get("name")
        if name is None or not has_file:
            raise UploadError(422, "send the form fields `name` (the dataset's name) and `file` (the archive)")
        _check_new_name(datasets_dir, name)
        if await run_in_threadpool(state.datasets.get, name) is not None:
            raise UploadError(409, f"dataset {name!r} already exists (uploaded through another replica)")
        limits = Limits(s.max_upload_bytes, s.max_unpacked_bytes, s.max_archive_entries)
        info = await run_in_threadpool(install_upload, work / "upload", work, datasets_dir, name, limits)
        manifest = await run_in_threadpool(_publish, state, datasets_dir / name, name, info)
    finally:
        await run_in_threadpool(shutil.rmtree, work, True)
    try:
        state.jobs.warm_dataset_stats(name)
    except BROKER_ERRORS as e:  # only a head start for the first search
        log.warning("could not queue the statistics of dataset %s: %s", name, e)
    return {**info, "local": True, "shared": True, "sha256": manifest.get("sha256"),
            "bytes": manifest.get("bytes")}


def _publish(state: AppState, folder: Path, name: str, info: dict) -> dict:
    """Share an installed dataset with every host; on failure uninstall it, so a refused
    upload leaves nothing behind (507 over the shared cap, 503 without Redis or when the store
    fails transiently)."""
    try:
        return state.datasets.publish(name, folder, info)
    except ValueError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadError(507, str(e)) from None
    except StoreUnavailable as e:  # the store's fault, not the upload's: say so, try again later
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadError(503, f"the shared store is unavailable ({e}); upload again later") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _check_new_name(datasets_dir: Path, name: str) -> None:
    try:
        check_dataset_name(name)
    except ValueError as e:
        raise UploadError(422, str(e)) from None
    if (datasets_dir / name).exists():
        raise UploadError(409, f"dataset {name!r} already exists")
