"""schemathesis (its CLI) against the live server's /openapi.json: examples, coverage, fuzzing
and stateful phases, with every default check (no 500s; status codes, content types, headers
and bodies as documented; invalid input refused, valid input accepted)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import TOKEN, LiveServer, make_mask, settings_for

from store.connection import EmbeddedRedis


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r, \
            LiveServer(settings_for(tmp_path_factory.mktemp("home"), r.url, max_n=8)) as srv:
        data = make_mask(0.5, 1, "alpha")
        with srv.client(admin=True) as c:  # one real domain, so /generate also answers 200
            c.post("/masks/import", files={"file": ("a", data)}).raise_for_status()
            c.put("/domains/alpha", json={"mask_id": hashlib.sha256(data).hexdigest()}).raise_for_status()
        yield srv


def schemathesis(url: str, workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{url}/openapi.json",
           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "30", "--seed", "1",
           "--generation-database", "none", "--request-timeout", "60", *args]
    run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-10000:]
    assert "Tested:" in out, out[-3000:]
    return out


UPLOADS = ("POST /masks/import", "POST /datasets")


@pytest.mark.slow
def test_api_conforms_to_its_schema(live, tmp_path):
    out = schemathesis(live.url, tmp_path, *(a for u in UPLOADS for a in ("--exclude-name", u)))
    assert "/generate" in out or "Selected" in out


@pytest.mark.slow
def test_uploads_conform_to_their_schema(live, tmp_path):
    """Any bytes fit the schema's `format: binary`, but only a verified file (a mask, an image
    archive) is accepted: a schema-valid upload of other bytes is rightly a 4xx naming the
    defect, so the one check that expects every schema-valid input to succeed is left out."""
    schemathesis(live.url, tmp_path, *(a for u in UPLOADS for a in ("--include-name", u)),
                 "--exclude-checks", "positive_data_acceptance")
