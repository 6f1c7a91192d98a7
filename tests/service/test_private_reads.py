"""A private deployment (SLT_READ_TOKEN): every route of the API but the probes needs a token,
reads included, over real HTTP; a public one (the default) answers reads without one.

The routes are taken from the app itself, so a route added later is checked too."""
from __future__ import annotations

import re

import pytest
from live_server import TOKEN, LiveServer, make_mask, settings_for

READ_TOKEN = "test-read-token"
OPEN = {"/healthz", "/readyz"}  # probes: load balancers and orchestrators carry no token
# the dashboard's page and files hold no secret (the page asks for a token); FastAPI's own docs
# show the schema only
PAGES = {"/admin", "/admin/static/{name}", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


@pytest.fixture(scope="module")
def private(tmp_path_factory, redis_url):
    with LiveServer(settings_for(tmp_path_factory.mktemp("private"), redis_url,
                                 read_token=READ_TOKEN)) as srv:
        yield srv


def _requests(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every API route in the app's OpenAPI document (the dashboard's
    pages are left out of it); path parameters filled with a harmless value."""
    out = []
    for path, operations in app.openapi()["paths"].items():
        if path in PAGES:
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        out += [(m.upper(), concrete) for m in sorted(operations) if m in ("get", "post", "put", "delete", "patch")]
    return out


def test_every_route_but_the_probes_needs_a_token(private):
    routes = _requests(private.app)
    assert {("GET", "/masks/x/file"), ("GET", "/metrics"), ("GET", "/jobs/x"), ("GET", "/datasets"),
            ("GET", "/generate")} <= set(routes)
    with private.client() as c:
        for method, path in routes:
            r = c.request(method, path)
            if path in OPEN:
                assert r.status_code == 200, (method, path, r.text)
            else:
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert "private" in r.json()["detail"]
            wrong = c.request(method, path, headers={"Authorization": "Bearer not-the-token"})
            assert (wrong.status_code == 401) == (path not in OPEN), (method, path, wrong.text)


def test_the_read_token_or_the_admin_token_reads_and_only_the_admin_token_writes(private):
    data = make_mask(0.5, 81, "private")
    admin = {"Authorization": f"Bearer {TOKEN}"}
    reader = {"Authorization": f"Bearer {READ_TOKEN}"}
    with private.client() as c:
        assert c.get("/masks").status_code == 401
        r = c.post("/masks/import", files={"file": ("m.safetensors", data)}, headers=reader)
        assert r.status_code == 401, r.text  # reading is not administering
        r = c.post("/masks/import", files={"file": ("m.safetensors", data)}, headers=admin)
        assert r.status_code in (200, 201), r.text
        mask_id = r.json()["mask_id"]
        for headers in (reader, admin):
            for path in ("/masks", f"/masks/{mask_id}", "/domains", "/jobs", "/datasets", "/metrics"):
                assert c.get(path, headers=headers).status_code == 200, path
            f = c.get(f"/masks/{mask_id}/file", headers=headers)
            assert f.status_code == 200 and f.content == data


def test_reads_are_public_without_the_setting_and_the_dashboard_page_always(tmp_path, redis_url, private):
    with private.client() as c:  # the page holds no secret: it asks for the token
        assert c.get("/masks").status_code == 401 and c.get("/admin").status_code == 200
    with LiveServer(settings_for(tmp_path / "home", redis_url)) as srv, srv.client() as c:
        for path in ("/masks", "/domains", "/jobs", "/datasets", "/metrics", "/readyz", "/admin"):
            assert c.get(path).status_code == 200, path
        assert c.post("/masks/import", files={"file": ("m.safetensors", b"x")}).status_code == 401
