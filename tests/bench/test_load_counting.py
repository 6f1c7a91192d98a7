"""The load generators count what the server answered: 200s, 429s and errors apart, against
the server's own tally (a stdlib HTTP server answering by the request's seed)."""
from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from bench import http_load, open_loop

STATUS_BY_SEED = (200, 429, 503)  # seed % 3


@pytest.fixture
def counting_server():
    tally: Counter[int] = Counter()
    tally.ports = set()  # the client's connections (their source ports)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the API

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if url.path == "/metrics":
                with lock:
                    body = f"slt_generate_rejected_total {float(tally[429])}\n".encode()
                status = 200
            else:
                status = STATUS_BY_SEED[int(parse_qs(url.query)["seed"][0]) % 3]
                body = b"{}"
                with lock:
                    tally[status] += 1
                    tally.ports.add(self.client_address[1])
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with _serving(Handler) as url:
        yield url, tally


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stdlib HTTP server on a free port, serving in a thread: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_open_loop_counts_429s_apart_from_errors(counting_server) -> None:
    url, tally = counting_server
    res = open_loop.run(url, rate=150, duration_s=1.0, connections=4,
                        path=lambda i: f"/generate?seed={i}&domain=d")
    assert res["sent"] == 150 and sum(tally.values()) == 150  # every arrival was answered
    assert res["ok"] == tally[200] == 50
    assert res["refused_429"] == tally[429] == 50
    assert res["errors"] == tally[503] == 50  # a 503 is an error; a 429 is not
    assert 1 <= len(tally.ports) <= 4  # kept alive: no more connections than it was given


def test_wrk_level_counts_statuses_from_its_own_script(counting_server, tmp_path) -> None:
    assert shutil.which("wrk"), "wrk is not installed (make test installs it: scripts/prereqs.sh)"
    url, tally = counting_server
    script = tmp_path / "load.lua"
    script.write_text(http_load._SCRIPT % ('"d"', 1, 10_000_000))
    res = http_load._level(url, script, c=2, duration_s=1, n=1, warmup_s=0)
    answered = sum(tally.values())
    counted = res["requests"]
    # wrk stops with at most one request in flight per connection, which the server answered
    assert answered - 2 <= counted <= answered
    assert res["requests"] > 30 and res["socket_errors"] == 0
    for status, key in ((200, None), (429, "refused_429")):
        assert tally[status] - 2 <= (res[key] if key else round(res["images_per_s"] * res["seconds"])) <= tally[status]
    assert tally[503] - 2 <= res["errors"] <= tally[503]  # the 503s, and only they, are errors
    assert res["refused_429_server"] == tally[429]


def test_wrk_level_measures_after_its_warm_up(counting_server, tmp_path) -> None:
    """A level's warm-up is load the server answers but the level does not count: wrk's own
    figures and the server's 429 counter both start after it."""
    url, tally = counting_server
    script = tmp_path / "load.lua"
    script.write_text(http_load._SCRIPT % ('"d"', 1, 10_000_000))
    res = http_load._level(url, script, c=2, duration_s=1, n=1, warmup_s=1)
    answered = sum(tally.values())
    assert res["requests"] > 30 and answered > res["requests"] + 30  # the warm-up's went uncounted
    assert res["refused_429"] - 2 <= res["refused_429_server"] <= res["refused_429"] + 2 < tally[429]


def test_open_loop_sends_again_on_a_kept_alive_connection_the_server_closed() -> None:
    """A server that closes every connection after one answer without saying so (as uvicorn
    does to a connection idle past its keep-alive timeout): each request that meets such a
    closed connection goes again on a new one, once, and is not counted as an error."""
    answered: Counter[int] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            answered[200] += 1
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            self.close_connection = True  # closed, though the answer promised keep-alive

        def log_message(self, *args) -> None:
            pass

    with _serving(Handler) as url:
        res = open_loop.run(url, rate=60, duration_s=1.0, connections=2, path=lambda i: f"/x?i={i}")
    assert res["errors"] == 0 and res["ok"] == answered[200] == 60, res["statuses"]


def test_a_level_over_its_rounds_is_the_median_with_counts_summed() -> None:
    def lv(ips, p99, refused):
        return {"p50_ms": p99 / 2, "p99_ms": p99, "requests_per_s": ips + refused / 10, "images_per_s": ips,
                "requests": ips * 10 + refused, "seconds": 10.0, "non_2xx": refused, "socket_errors": 0,
                "refused_429": refused, "refused_429_server": refused, "errors": 0}

    level = http_load.median_level([lv(230.0, 900.0, 5), lv(260.0, 2100.0, 0), lv(250.0, 1300.0, 10)])
    assert level["images_per_s"] == 250.0 and level["p99_ms"] == 1300.0 and level["p50_ms"] == 650.0
    assert level["p99_max_ms"] == 2100.0  # the worst round is kept beside the median
    assert level["requests"] == 2305 + 2600 + 2510 and level["refused_429"] == 15 and level["seconds"] == 30.0
    assert [r["images_per_s"] for r in level["rounds"]] == [230.0, 260.0, 250.0]
