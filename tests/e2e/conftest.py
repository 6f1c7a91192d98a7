"""The headless Chromium the end-to-end tests drive (Debian's `chromium` through Playwright)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = Path(os.environ.get("SLT_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():  # `make test` installs it: a missing browser is a failure, not a skip
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
