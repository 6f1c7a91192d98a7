"""What the OpenAPI document says about errors, matching what the app's handlers really send."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class ErrorBody(BaseModel):
    """Every error: a JSON object with a human-readable `detail`."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422 from request validation: `detail` summarises, `errors` lists each problem."""

    detail: str
    errors: list[ValidationIssue] = []


_TEXT = {
    400: "Bad request", 401: "Admin token missing or wrong", 403: "Admin routes disabled",
    404: "Not found", 409: "Conflict", 413: "Too large", 422: "Invalid parameter or body",
    429: "Saturated: retry after `Retry-After` seconds", 503: "Temporarily unavailable",
}
_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error codes, with the JSON error body they carry."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ValidationErrorBody if code == 422 else ErrorBody,
                                 "description": _TEXT.get(code, "Error")}
        if code in (429, 503):
            entry["headers"] = _RETRY
        out[code] = entry
    return out


ADMIN = errors(401, 403)


def install(app: FastAPI) -> None:
    """Make /openapi.json describe errors as the app sends them (FastAPI's default
    HTTPValidationError has `detail` as a list, ours a string plus `errors`; an unparseable
    body is a 400) and state configured bounds (images per request) as schema limits."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = FastAPI.openapi(app)  # FastAPI's own document, then amended in place
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        if "HTTPValidationError" in comps:
            body = ValidationErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(body.pop("$defs", {}))
            comps["HTTPValidationError"] = body
        for ops in schema.get("paths", {}).values():
            for op in ops.values():  # a body that is not even JSON (or multipart) is a 400
                if isinstance(op, dict) and "requestBody" in op:
                    op.setdefault("responses", {}).setdefault("400", {
                        "description": "Body unparseable",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
                    comps.setdefault("ErrorBody", ErrorBody.model_json_schema())
        max_n = getattr(app.state.settings, "max_n", None)
        for p in schema.get("paths", {}).get("/generate", {}).get("get", {}).get("parameters", []):
            if p.get("name") == "n" and max_n:
                p.setdefault("schema", {})["maximum"] = max_n
        for p in schema.get("paths", {}).get("/interpolate", {}).get("get", {}).get("parameters", []):
            if p.get("name") == "steps" and max_n:  # images per strip: the same bound
                p.setdefault("schema", {})["maximum"] = min(max_n, p.get("schema", {}).get("maximum", max_n))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, path: str) -> str:
    """`Allow` for a 405: the methods of every route on this path. Starlette names only the
    first partial match's, so /domains/x would claim GET alone though PUT exists too. A literal
    path (/masks/import) is more specific than a template that also matches it (/masks/{id})."""
    matches = [r for r in app.routes if getattr(r, "path_regex", None) is not None
               and getattr(r, "methods", None) and r.path_regex.match(path)]
    literal = [r for r in matches if "{" not in r.path]
    methods = set().union(*(r.methods for r in (literal or matches)))
    return ", ".join(sorted(methods))
