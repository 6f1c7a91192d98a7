"""The OpenAPI document: valid OAS 3.1 (openapi-spec-validator), and schemathesis (its CLI)
against the live server as an operator would run it: the admin token, every check, the
examples, coverage, fuzzing and stateful phases, with real domains, masks and a dataset to
reach. A check is turned off only for a route where it cannot hold, each saying why."""
from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys

import httpx
import pytest
from live_server import TOKEN, LiveServer, make_mask, settings_for
from PIL import Image

from store.connection import EmbeddedRedis

log = logging.getLogger(__name__)
DOMAINS = {"alpha": (0.5, 1), "beta": (0.3, 2)}  # kept: /generate reaches real masks
DISPOSABLE = {"gamma": (0.7, 3)}  # what the DELETE routes get to delete

# Every check on every route (`--checks all` on the command line would take precedence over the
# per-route exclusions below, so the same set is enabled here instead), and real identifiers
# mixed into the generated ones, so requests reach the routes' logic and not only their 404s.
CONFIG = """\
[checks]
enabled = true

[dictionaries.masks]
values = {masks}
[dictionaries.domains]
values = {domains}
[dictionaries.datasets]
values = ["tiny"]
[dictionaries.disposable-masks]
values = {disposable_masks}
[dictionaries.disposable-domains]
values = {disposable_domains}

[parameters]
"path.mask_id" = {{ dictionary = "masks", probability = 0.5 }}
"path.name" = {{ dictionary = "domains", probability = 0.5 }}
"query.domain" = {{ dictionary = "domains", probability = 0.5 }}
"body.mask_id" = {{ dictionary = "masks", probability = 0.5 }}
"body.domain" = {{ dictionary = "domains", probability = 0.5 }}
"body.dataset" = {{ dictionary = "datasets", probability = 0.5 }}

# The deletes reach a domain and a mask of their own, so the others stay for the other routes.
[[operations]]
include-name = ["DELETE /domains/{{name}}", "DELETE /masks/{{mask_id}}"]
parameters = {{ "path.name" = {{ dictionary = "disposable-domains", probability = 0.5 }}, "path.mask_id" = {{ dictionary = "disposable-masks", probability = 0.5 }} }}

# Any bytes fit the schema's `format: binary`, but only a verified file (a mask of the served
# base, an archive of images) is accepted: a schema-valid upload of other bytes is rightly a
# 4xx naming the defect, so "schema-valid input is accepted" cannot hold for these two.
[[operations]]
include-name = ["POST /masks/import", "POST /datasets"]
checks.positive_data_acceptance.enabled = false

# DELETE /jobs/{{job_id}} cancels a job (the fixed contract); the job, now `cancelled`, stays
# readable, so "a deleted resource is gone" cannot hold for the reads of a job.
[[operations]]
include-name = ["GET /jobs/{{job_id}}", "GET /jobs/{{job_id}}/preview", "GET /jobs/{{job_id}}/events"]
checks.use_after_free.enabled = false
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tiny = home / "datasets" / "tiny"  # so POST /masks can queue a job (no worker takes it)
    tiny.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 20, 20)).save(tiny / f"{i}.png")
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r, \
            LiveServer(settings_for(home, r.url, max_n=8, events_max_s=2)) as srv:  # a queued job's
        # event stream (no worker takes it) closes within the request timeout
        ids = {}
        with srv.client(admin=True) as c:  # real domains, so /generate also answers 200
            for name, (k, seed) in {**DOMAINS, **DISPOSABLE}.items():
                data = make_mask(k, seed, name)
                c.post("/masks/import", files={"file": ("m", data)}).raise_for_status()
                ids[name] = hashlib.sha256(data).hexdigest()
                c.put(f"/domains/{name}", json={"mask_id": ids[name]}).raise_for_status()
        srv.mask_ids = ids
        yield srv


def test_openapi_document_is_valid_oas_3_1(live):
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    doc = httpx.get(f"{live.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert "prefixItems" not in str(doc)  # schemathesis bug #3842; see Job.losses
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if any("HTTPBearer" in s for s in op.get("security", [])):  # the admin routes
                assert {"401", "403"} <= codes, (method, path)


@pytest.mark.slow
def test_api_conforms_to_its_schema(live, tmp_path):
    config = CONFIG.format(
        masks=[live.mask_ids[d] for d in DOMAINS], domains=list(DOMAINS),
        disposable_masks=[live.mask_ids[d] for d in DISPOSABLE], disposable_domains=list(DISPOSABLE),
    ).replace("'", '"')
    (tmp_path / "schemathesis.toml").write_text(config)
    cmd = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{live.url}/openapi.json",
           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "40", "--seed", "1",
           "--generation-database", "none", "--request-timeout", "60"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    (tmp_path / "schemathesis.log").write_text(out)
    assert run.returncode == 0, out[-10000:]
    tested = re.search(r"Tested:\s+(\d+)", out)
    assert tested and int(tested.group(1)) == _operations(live), out[-3000:]  # every route
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases and cases.group(1) == cases.group(2), out[-3000:]
    log.info("schemathesis: %s test cases on %s operations, all passed", cases.group(1), tested.group(1))


def _operations(live) -> int:
    doc = httpx.get(f"{live.url}/openapi.json").json()
    return sum(1 for ops in doc["paths"].values() for m in ops if m in ("get", "put", "post", "delete"))
