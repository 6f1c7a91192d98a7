"""GET /jobs/{id}/events through real HTTP: a redis-server, two API replicas (each its own
SLT_HOME) under uvicorn and a worker process. Both replicas stream one search live, event for
event; a client resumes with Last-Event-ID; the last event carries the job's end status."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from slt_stack import TOKEN, Stack, copy_images

from store.jobs import JobStore

pytestmark = pytest.mark.slow

ITERATIONS = 40


def read_events(url: str, job_id: str, last_event_id: str | None = None,
                until_comments: int = 0) -> tuple[list[dict], int]:
    """The events of one stream, parsed as a browser would, until the server closes it (or, with
    `until_comments`, until that many comment lines arrived); also the comment lines counted."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[dict] = []
    comments = 0
    current: dict = {}
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line == "":
                if "event" in current:
                    events.append({**current, "data": json.loads(current["data"])})
                current = {}
            elif line.startswith(":"):
                comments += 1
                if until_comments and comments >= until_comments:
                    break
            else:
                field, _, value = line.partition(":")
                current[field] = value[1:] if value.startswith(" ") else value
    return events, comments


def sid(event: dict) -> tuple[int, int]:
    """A Redis stream id as numbers (compared as such, not as text)."""
    ms, seq = event["id"].split("-")
    return int(ms), int(seq)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, emoji_google_dir: Path):
    root = tmp_path_factory.mktemp("events")
    copy_images(emoji_google_dir, root / "a" / "datasets" / "tiny")
    st = Stack(root / "a", SLT_EVENTS_KEEPALIVE_S="0.3")
    try:
        st.start_api()
        st.replica_url = st.start_api(home=root / "b", name="api-b")  # no shared disk with A
        st.start_worker()
        yield st
    finally:
        st.close()


def test_two_replicas_stream_a_search_live_and_a_client_resumes(stack: Stack):
    job_id = stack.submit("tiny", domain="events-tiny", iterations=ITERATIONS)
    streams: dict[str, list[dict]] = {}

    def follow(name: str, url: str) -> None:
        streams[name] = read_events(url, job_id)[0]

    threads = [threading.Thread(target=follow, args=(n, u)) for n, u in
               (("a", stack.url), ("b", stack.replica_url))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    a, b = streams["a"], streams["b"]

    # the first event is the record now, the last the end status; in between the live events
    assert a[0]["event"] == "job" and a[0]["data"]["job_id"] == job_id
    end = a[-1]
    job = stack.job(job_id)
    assert job["status"] == "succeeded"
    assert end["event"] == "end" and end["id"] == "end"
    assert end["data"]["status"] == "succeeded" and end["data"]["mask_id"] == job["mask_id"]
    live = a[1:-1]
    progress = [e["data"] for e in live if e["event"] == "progress"]
    iterations = [p["iteration"] for p in progress]
    assert len(iterations) >= 2 and iterations == sorted(set(iterations)), iterations
    assert iterations[-1] == ITERATIONS and progress[-1]["progress"] == 1.0
    assert all(p["iterations"] == ITERATIONS and "eta_s" in p and "loss" in p for p in progress)
    assert any(p.get("preview_iteration") for p in progress)  # the preview ids, as they came
    phases = [e["data"]["phase"] for e in live if e["event"] == "phase"]
    assert "searching" in phases and phases.index("searching") == len(phases) - 1
    # ids: the stream's own, rising, no duplicates
    ids = [sid(e) for e in live]
    assert ids == sorted(set(ids))

    # the other replica (its own disk, the same Redis) streamed the same events (from its start)
    assert b[0]["event"] == "job" and b[-1] == end
    assert [e for e in b[1:-1] if sid(e) > sid(a[0])] == [e for e in live if sid(e) > sid(b[0])]
    assert len(b) > 2

    # resume after the second progress event, on replica B: the rest, no duplicate, none missed
    cut = next(i for i, e in enumerate(live) if e["event"] == "progress" and e["data"]["iteration"]
               == iterations[1])
    resumed, _ = read_events(stack.replica_url, job_id, last_event_id=live[cut]["id"])
    assert resumed == live[cut + 1:] + [end]

    # after the end: nothing more (204 tells an EventSource not to reconnect)
    r = httpx.get(f"{stack.url}/jobs/{job_id}/events", headers={"Last-Event-ID": "end"})
    assert r.status_code == 204


def test_an_idle_stream_keeps_alive_and_ends_when_the_job_is_cancelled(stack: Stack):
    # a job recorded but never sent to a worker: it stays queued until the API cancels it
    store = JobStore(stack.store.r)
    job = store.create(domain="idle", dataset="tiny", preset="demo", config={"iterations": 5},
                       base={}, promote=False, time_limit_s=60)
    events, comments = read_events(stack.replica_url, job["job_id"], until_comments=3)
    assert comments == 3 and [e["event"] for e in events] == ["job"]
    assert events[0]["data"]["status"] == "queued"

    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(
        zip(("events", "comments"), read_events(stack.url, job["job_id"], last_event_id=events[0]["id"]))))
    reader.start()
    r = httpx.delete(f"{stack.url}/jobs/{job['job_id']}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202, r.text
    reader.join(60)
    assert [e["event"] for e in got["events"]] == ["end"]
    assert got["events"][0]["data"]["status"] == "cancelled"
    assert got["events"][0]["data"]["note"] == "cancelled while queued"


@pytest.mark.parametrize("job_id, headers, code", [
    ("0" * 32, {}, 404),  # no such job
    ("not-a-job", {}, 422),
    ("0" * 32, {"Last-Event-ID": "yesterday"}, 422),
])
def test_event_stream_refuses_bad_requests(stack: Stack, job_id: str, headers: dict, code: int):
    r = httpx.get(f"{stack.url}/jobs/{job_id}/events", headers=headers)
    assert r.status_code == code, r.text
    assert "no job" in r.json()["detail"] if code == 404 else "detail" in r.json()
