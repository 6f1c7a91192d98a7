"""The public playground at `/` in headless Chromium (Debian's `chromium`, driven by Playwright)
against the API under uvicorn with a real Redis: no token, a domain picked, the grid and the
interpolation strip rendered, their provenance shown, and each "reproduce" link giving the very
bytes the page shows. Screenshot: the test's folder; with SLT_UPDATE_SCREENSHOTS=1 also
docs/images/playground.png (shown in the README)."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright import sync_api
from slt_stack import TOKEN, Stack

from service.settings import parse_base
from trainer.search import SearchConfig, random_mask

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"
LOADED = "(sel) => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }"
# the pixels the page shows, read back through a canvas as RGBA (the page's CSP lets it fetch
# nothing but its own origin, so not its blob: URLs)
SHOWN_PIXELS = """(sel) => {
  const img = document.querySelector(sel), c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
  const b = ctx.getImageData(0, 0, c.width, c.height).data;
  let s = ""; for (const x of b) s += String.fromCharCode(x); return btoa(s); }"""


def shown(page, sel: str) -> bytes:
    return base64.b64decode(page.evaluate(SHOWN_PIXELS, sel))


def rgba(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGBA").tobytes()



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = Stack(tmp_path_factory.mktemp("playground") / "home")
    try:
        st.start_api()
        data = random_mask(parse_base("width=0.0625"), SearchConfig(k=0.5, seed=0, bn_batches=2),
                           dataset_sha="0" * 64, domain="playground")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{st.url}/masks/import", headers=auth, files={"file": ("m.safetensors", data)})
        assert r.status_code in (200, 201), r.text
        st.mask_id = hashlib.sha256(data).hexdigest()
        r = httpx.put(f"{st.url}/domains/playground", headers=auth, json={"mask_id": st.mask_id})
        assert r.status_code == 200, r.text
        yield st
    finally:
        st.close()


def test_playground_renders_reproducible_images_without_a_token(stack: Stack, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    r = httpx.get(f"{stack.url}/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    page.goto(f"{stack.url}/")
    sync_api.expect(page.locator("#pg-domain option[value=playground]")).to_have_count(1, timeout=15_000)
    page.fill("#pg-seed", "5")
    page.fill("#pg-n", "9")
    page.fill("#pg-seed-to", "12")
    page.fill("#pg-steps", "8")
    page.click("#pg-go")
    # the page marks the query whose images it shows (an earlier one's may arrive later)
    page.wait_for_function("() => (document.body.dataset.rendered || '').includes('seed_to=12')",
                           timeout=60_000)
    for sel in ("#pg-grid", "#pg-strip"):
        assert page.evaluate(LOADED, sel)
    assert page.evaluate("document.querySelector('#pg-grid').naturalWidth") == 3 * 66 + 2
    assert page.evaluate("document.querySelector('#pg-strip').naturalWidth") == 8 * 66 + 2

    # each link is the exact query: the same bytes each time, the pixels the page shows
    for img, link in (("#pg-grid", "#pg-grid-link"), ("#pg-strip", "#pg-strip-link")):
        href = page.get_attribute(link, "href")
        first, second = (httpx.get(href, timeout=60).content for _ in range(2))
        assert first == second and rgba(first) == shown(page, img), href
    assert "/generate?domain=playground&seed=5&n=9" in page.get_attribute("#pg-grid-link", "href")

    # the provenance from the PNGs' text chunks
    grid = page.text_content("#pg-grid-prov")
    assert f"mask_id: {stack.mask_id}" in grid and "seed: 5" in grid and "index: 0,1,2" in grid
    strip = page.text_content("#pg-strip-prov")
    assert "seed_to: 12" in strip and "interpolation: slerp" in strip and "steps: 8" in strip

    # the page's own address reproduces the form (a shared link)
    again = browser.new_page()
    again.goto(page.url)
    again.wait_for_function("() => document.body.dataset.rendered", timeout=60_000)
    assert again.input_value("#pg-seed-to") == "12"
    assert shown(again, "#pg-strip") == shown(page, "#pg-strip")

    path = tmp_path / "playground.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SLT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / "playground.png")
    assert not errors, errors
