"""The admin dashboard end to end, in headless Chromium (Debian's `chromium`, driven by
Playwright) against a real stack: the API, a Redis and a Celery worker, each its own process.

Enter the token, launch a search from the form, watch its progress bar move and its domain
appear with a sample grid, launch a second one for the same domain, roll back. Screenshots go
to the test's folder; with SLT_UPDATE_SCREENSHOTS=1 also to docs/images/.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from playwright import sync_api
from slt_stack import TOKEN, Stack, copy_images

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"
SAMPLE_LOADED = ("() => { const i = document.querySelector('article.domain[data-domain=\"e2e-emoji\"] img.sample');"
                 " return i && i.complete && i.naturalWidth > 0; }")
ITERATIONS = 16  # at batch 2 on a tiny base: seconds
LONG_ITERATIONS = 5000  # 50 iterations per percent: the bar is seen moving, then cancelled



@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    home = tmp_path_factory.mktemp("e2e") / "home"
    copy_images(emoji_google_dir, home / "datasets" / "emoji", n=48)
    st = Stack(home)
    try:
        st.start_api()
        st.start_worker()
        yield st
    finally:
        st.close()


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SLT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / name)
    return path


def progress_of(page, job_id: str) -> int:
    bar = page.locator(f'article[data-job="{job_id}"] .bar')
    return int(bar.get_attribute("aria-valuenow") or 0)


def launch(page, domain: str, iterations: int = ITERATIONS) -> str:
    """Fill the form and submit; returns the new job's id (the newest card)."""
    page.select_option("#f-dataset", "emoji")
    page.fill("#f-domain", domain)
    page.select_option("#f-preset", "demo")
    page.fill("#f-k", "0.2")
    page.fill("#f-iterations", str(iterations))
    page.fill("#f-batch", "2")
    page.select_option("#f-pruning", "local")
    before = set(page.eval_on_selector_all("article.job", "els => els.map(e => e.dataset.job)"))
    page.click("#f-submit")
    sync_api.expect(page.locator("#launch-result")).to_contain_text("queued", timeout=10_000)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = set(page.eval_on_selector_all("article.job", "els => els.map(e => e.dataset.job)"))
        if now - before:
            return (now - before).pop()
        time.sleep(0.1)
    raise AssertionError("the launched job never appeared on the dashboard")


def wait_status(page, job_id: str, status: str, timeout: float = 600) -> None:
    sync_api.expect(page.locator(f'article[data-job="{job_id}"] .job-status')).to_have_text(
        status, timeout=timeout * 1000)


@pytest.mark.timeout(1800)  # two real searches; minutes on a busy 2-core machine
def test_dashboard_launch_watch_promote_and_roll_back(stack: Stack, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.url}/admin")

    # the token, asked once and kept in localStorage
    dialog = page.locator("#token-dialog")
    sync_api.expect(dialog).to_be_visible()
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    sync_api.expect(dialog).to_be_hidden()
    assert page.evaluate("localStorage.getItem('slt-admin-token')") == TOKEN
    sync_api.expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
    sync_api.expect(page.locator("#f-dataset option[value=emoji]")).to_have_count(1, timeout=10_000)

    # a long search from the form: the bar and the loss curve move while it runs; then it is
    # cancelled from its card. Long enough that even an idle fast machine cannot finish it
    # before the bar has been seen at three places.
    first = launch(page, "e2e-long", iterations=LONG_ITERATIONS)
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = page.locator(f'article[data-job="{first}"] .job-status').text_content()
        if status == "running":
            seen.add(progress_of(page, first))
        if status in ("succeeded", "failed", "cancelled") or len({p for p in seen if 0 < p < 100}) >= 3:
            break
        time.sleep(0.2)
    moving = sorted(p for p in seen if 0 < p < 100)
    assert len(moving) >= 2, f"progress never seen moving: {sorted(seen)}"
    assert page.locator(f'article[data-job="{first}"] svg.curve polyline').count() == 1
    shot(page, tmp_path, "dashboard-running.png")
    page.locator(f'article[data-job="{first}"] button.job-cancel').click()
    wait_status(page, first, "cancelled", timeout=60)
    assert stack.job(first).get("mask_id") is None

    # a short search that finishes
    first = launch(page, "e2e-emoji")
    wait_status(page, first, "succeeded")

    # the domain appears, with a sample grid the API generated
    domain = page.locator('article.domain[data-domain="e2e-emoji"]')
    sync_api.expect(domain).to_be_visible(timeout=15_000)
    sample = domain.locator("img.sample")
    sync_api.expect(sample).to_be_visible()
    page.wait_for_function(SAMPLE_LOADED, timeout=30_000)
    first_mask = stack.job(first)["mask_id"]
    sync_api.expect(domain.locator(".domain-head code")).to_have_text(first_mask[:10])
    sync_api.expect(page.locator(f'tr[data-mask="{first_mask}"]')).to_be_visible(timeout=10_000)

    # a second search for the same domain replaces its mask; watch it run for the screenshot
    second = launch(page, "e2e-emoji")
    page.wait_for_function(
        f"() => {{ const b = document.querySelector('article[data-job=\"{second}\"] .bar');"
        " return b && Number(b.getAttribute('aria-valuenow')) > 5; }", timeout=600_000)
    shot(page, tmp_path, "dashboard.png")
    wait_status(page, second, "succeeded")
    second_mask = stack.job(second)["mask_id"]
    assert second_mask != first_mask
    sync_api.expect(domain.locator(".domain-head code")).to_have_text(second_mask[:10], timeout=15_000)

    # roll back from the dashboard: the API serves the first mask again at once
    domain.locator("button.rollback").click()
    sync_api.expect(domain.locator(".domain-head code")).to_have_text(first_mask[:10], timeout=15_000)
    r = httpx.get(f"{stack.url}/generate", params={"domain": "e2e-emoji", "seed": 1}, timeout=60)
    assert r.status_code == 200 and r.headers["x-mask-id"] == first_mask
    history = [h["mask_id"] for h in httpx.get(f"{stack.url}/domains").json()[0]["history"]]
    assert history[:3] == [first_mask, second_mask, first_mask]
    shot(page, tmp_path, "dashboard-rolled-back.png")

    # readable on a phone: no sideways scrolling of the page itself
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                             is_mobile=True, has_touch=True)
    phone.goto(f"{stack.url}/admin")
    phone.evaluate(f"localStorage.setItem('slt-admin-token', {TOKEN!r})")
    phone.reload()
    sync_api.expect(phone.locator('article.domain[data-domain="e2e-emoji"]')).to_be_visible(timeout=15_000)
    phone.wait_for_function(SAMPLE_LOADED, timeout=30_000)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(phone, tmp_path, "dashboard-phone.png")
    assert not errors, errors


def test_dashboard_refuses_a_wrong_token(stack: Stack, browser):
    page = browser.new_page()
    page.goto(f"{stack.url}/admin")
    page.fill("#token-input", "wrong")
    page.click("#token-save")
    page.select_option("#f-dataset", "emoji")
    page.fill("#f-domain", "never")
    page.click("#f-submit")
    sync_api.expect(page.locator("#token-error")).to_contain_text("admin token", timeout=10_000)
    sync_api.expect(page.locator("#launch-result")).to_contain_text("401")


# ---- live progress through the event stream (issue 24) ---------------------------------------

def _job_read(url: str) -> bool:
    """A read of the job list or a job record (what polling does); not its events or preview."""
    path = urlparse(url).path
    return path.startswith("/jobs") and not path.endswith(("/events", "/preview"))


def _watch_moving(page, job_id: str, timeout: float = 600) -> list[int]:
    """Progress values (0 < p < 100) seen on the job's bar, until three or the timeout."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len({p for p in seen if 0 < p < 100}) < 3:
        seen.add(progress_of(page, job_id))
        time.sleep(0.2)
    return sorted(p for p in seen if 0 < p < 100)


def _token_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(f"localStorage.setItem('slt-admin-token', {TOKEN!r})")
    return page


def _cancel(stack: Stack, job_id: str) -> None:
    r = httpx.delete(f"{stack.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202, r.text


@pytest.mark.timeout(900)
def test_dashboard_follows_a_running_job_through_its_event_stream(stack: Stack, browser):
    page = _token_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    job_id = stack.submit("emoji", domain="e2e-stream", iterations=LONG_ITERATIONS)
    opened: list[str] = []
    page.on("request", lambda r: opened.append(r.url) if r.url.endswith(f"/jobs/{job_id}/events") else None)
    page.goto(f"{stack.url}/admin")
    card = page.locator(f'article[data-job="{job_id}"]')
    sync_api.expect(card).to_have_attribute("data-live", "stream", timeout=60_000)
    wait_status(page, job_id, "running", timeout=300)

    # from here every read of the job list or record fails: the bar moves from the stream alone
    refused: list[str] = []

    def refuse(route):
        refused.append(route.request.url)
        route.abort()

    page.route(_job_read, refuse)
    moving = _watch_moving(page, job_id)
    assert len(moving) >= 3, f"progress never seen moving without polling: {moving}"
    assert card.get_attribute("data-live") == "stream"
    assert len(opened) == 1  # one stream, never reopened

    # the end: the stream's last event shows it, though the list still cannot be read
    _cancel(stack, job_id)
    wait_status(page, job_id, "cancelled", timeout=60)
    assert not errors, errors


@pytest.mark.timeout(900)
def test_dashboard_polls_when_the_event_stream_fails(stack: Stack, browser):
    page = _token_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/events", lambda route: route.abort())  # a proxy that drops streams
    job_id = stack.submit("emoji", domain="e2e-poll", iterations=LONG_ITERATIONS)
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if _job_read(r.url) else None)
    page.goto(f"{stack.url}/admin")
    wait_status(page, job_id, "running", timeout=300)
    before = len(polled)
    moving = _watch_moving(page, job_id)
    assert len(moving) >= 3, f"progress never seen moving by polling: {moving}"
    assert len(polled) > before  # the list was read meanwhile: polling took over
    assert page.locator(f'article[data-job="{job_id}"]').get_attribute("data-live") == "poll"
    _cancel(stack, job_id)
    wait_status(page, job_id, "cancelled", timeout=60)
    assert not errors, errors
