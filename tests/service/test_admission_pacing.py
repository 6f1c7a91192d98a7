"""A refused connection is paced: the 429 is written at once, the connection's next request is
read only after the pause (what a client honouring Retry-After does anyway), other connections
are served meanwhile, and nothing is lost. Real uvicorn with the protocol `python -m service`
runs, over raw sockets."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from service.admission import PAUSE, PacedHttpToolsProtocol, pause_s
from store.connection import free_port

PAUSE_S = 2.0


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/refuse":
        scope[PAUSE] = PAUSE_S
        status = 429
    else:
        status = 200
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server():
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off", http=PacedHttpToolsProtocol))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    t.join(10)


def _get(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())


def _status(sock: socket.socket) -> int:
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_refused_connection_is_read_again_only_after_its_pause(server) -> None:
    a = socket.create_connection(("127.0.0.1", server), timeout=10)
    b = socket.create_connection(("127.0.0.1", server), timeout=10)
    _get(a, "/refuse")
    assert _status(a) == 429  # the refusal itself is not delayed
    _get(a, "/next")  # sent at once, as a closed-loop client does
    _get(b, "/other")
    assert _status(b) == 200  # another connection is served meanwhile
    a.settimeout(PAUSE_S / 4)
    with pytest.raises(TimeoutError):
        a.recv(4096)  # the paused connection's request is not answered yet
    a.settimeout(10)
    assert _status(a) == 200  # and after the pause it is: nothing lost
    _get(a, "/again")
    assert _status(a) == 200  # a 200 does not pause the connection: answered within 10 s
    a.close()
    b.close()


def test_the_pause_is_half_the_bound_and_never_longer_than_retry_after() -> None:
    assert pause_s(1, 1.0) == pytest.approx(0.5)  # half the bound
    assert pause_s(3, 1.0) == pytest.approx(0.5)  # however far the estimate is over it
    assert pause_s(1, 4.0) == 1.0  # never longer than the Retry-After it was told
