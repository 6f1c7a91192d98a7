"""The API's operations as Python calls, over httpx.

`OPERATIONS` is the one list of what this client calls: each operation by its OpenAPI id, with
its method, path and the query parameters it may send. Every call goes through `Client.call`,
which sends only what the table declares, and tests/client/test_contract.py checks the table
against the app's OpenAPI document, so the two cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from slt.settings import ClientSettings


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with `{name}` path parameters, as in the OpenAPI document
    params: tuple[str, ...] = ()  # query parameters
    headers: tuple[str, ...] = ()  # header parameters


OPERATIONS: dict[str, Operation] = {
    "generate_images": Operation("GET", "/generate", ("domain", "n", "seed", "format")),
    "submit_search": Operation("POST", "/masks"),
    "get_job": Operation("GET", "/jobs/{job_id}"),
    "follow_job_events": Operation("GET", "/jobs/{job_id}/events", headers=("last-event-id",)),
    "update_domain": Operation("PUT", "/domains/{name}"),
    "upload_dataset": Operation("POST", "/datasets"),
    "get_mask": Operation("GET", "/masks/{mask_id}"),
    "get_mask_file": Operation("GET", "/masks/{mask_id}/file"),
    "get_mask_card": Operation("GET", "/masks/{mask_id}/card"),
    "import_mask": Operation("POST", "/masks/import"),
}


class ApiError(Exception):
    """The API refused a request (its `detail`), or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500] or r.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


class Client:
    """One API deployment. Methods are named as the operations they call."""

    def __init__(self, settings: ClientSettings):
        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
        self.http = httpx.Client(base_url=settings.url.rstrip("/"), headers=headers,
                                 timeout=settings.http_timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the one way out ------------------------------------------------------------------
    def request(self, operation: str, path_params: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                stream: bool = False, **kwargs: Any) -> httpx.Response:
        """Send `operation` (an OPERATIONS key) with only the parameters it declares; an error
        answer (4xx/5xx) raises ApiError with the API's `detail`. `stream`: the body unread."""
        op = OPERATIONS[operation]
        params = {k: v for k, v in (params or {}).items() if v is not None}
        headers = {k.lower(): v for k, v in (headers or {}).items() if v is not None}
        if undeclared := (set(params) - set(op.params)) | (set(headers) - set(op.headers)):
            raise ValueError(f"{operation} declares no parameter {sorted(undeclared)}")
        url = op.path.format(**(path_params or {}))
        req = self.http.build_request(op.method, url, params=params, headers=headers, **kwargs)
        try:
            r = self.http.send(req, stream=stream)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach {self.settings.url}: {e}") from None
        if r.status_code >= 400:
            if stream:
                r.read()
                r.close()
            raise ApiError(f"{op.method} {url}: {r.status_code} {_detail(r)}", r.status_code)
        return r

    # ---- operations -----------------------------------------------------------------------
    def generate_images(self, domain: str, n: int = 1, seed: int | None = None,
                        format: str = "png") -> httpx.Response:
        return self.request("generate_images", params={"domain": domain, "n": n, "seed": seed,
                                                       "format": format})

    def submit_search(self, body: dict) -> dict:
        return self.request("submit_search", json=body).json()

    def get_job(self, job_id: str) -> dict:
        return self.request("get_job", {"job_id": job_id}).json()

    def follow_job_events(self, job_id: str, last_event_id: str | None = None) -> httpx.Response:
        """The open event stream (close it); 204 when nothing follows `last_event_id`."""
        return self.request("follow_job_events", {"job_id": job_id},
                            headers={"last-event-id": last_event_id}, stream=True,
                            timeout=httpx.Timeout(self.settings.http_timeout_s, read=None))

    def update_domain(self, name: str, body: dict) -> dict:
        return self.request("update_domain", {"name": name}, json=body).json()

    def upload_dataset(self, name: str, archive: Path) -> dict:
        with archive.open("rb") as f:
            return self.request("upload_dataset", data={"name": name},
                                files={"file": (archive.name, f, "application/octet-stream")}).json()

    def get_mask(self, mask_id: str) -> dict:
        return self.request("get_mask", {"mask_id": mask_id}).json()

    def get_mask_file(self, mask_id: str) -> bytes:
        return self.request("get_mask_file", {"mask_id": mask_id}).content

    def get_mask_card(self, mask_id: str) -> str:
        return self.request("get_mask_card", {"mask_id": mask_id}).text

    def import_mask(self, name: str, data: bytes | BinaryIO) -> httpx.Response:
        """201 imported, 200 already known; the body is the mask's metadata."""
        return self.request("import_mask", files={"file": (name, data, "application/octet-stream")})


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) of each event of a text/event-stream (WHATWG rules: `data` lines
    joined by newlines, comment lines and `retry` skipped, an event dispatched at a blank line)."""
    eid: str | None = None
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield eid, event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id" and "\0" not in value:
            eid = value
