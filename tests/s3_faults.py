"""S3 with faults on demand, over real HTTP: moto's S3 server behind a small proxy that relays
every request to it unless told to fail the next few that match.

    with FaultyS3() as s3:                       # or the `faulty_s3` fixture (bucket "slt")
        s3.create_bucket("slt")
        blobs = S3Blobs("slt", endpoint_url=s3.endpoint_url)
        s3.fail_next(2, "GET", path_contains="/slt/blobs/")   # 500 InternalError, twice
        s3.fail_next(1, "PUT", status=0)                      # drop the connection, once
        ...
        s3.clear()                                            # no more faults

Clients need credentials of any value (`S3_ENV`, set by the fixture); moto checks none.
"""
from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from store.connection import free_port

log = logging.getLogger(__name__)

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
          "AWS_DEFAULT_REGION": "us-east-1"}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length"}
_ERROR_CODES = {500: "InternalError", 503: "SlowDown", 429: "SlowDown", 403: "AccessDenied",
                404: "NoSuchKey", 400: "InvalidRequest"}


@dataclass
class Fault:
    """Answer `status` (0: drop the connection without an answer) to the next `left` requests
    whose method is `method` (None: any) and whose path contains `path_contains`."""

    left: int
    method: str | None
    path_contains: str
    status: int


class FaultyS3:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.served_faults = 0  # requests answered with a fault so far
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._moto = None
        self._proxy: ThreadingHTTPServer | None = None
        self._moto_port = 0

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultyS3:
        from moto import server as moto_server

        self._moto_port = free_port()
        self._moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self._moto_port)
        self._moto.start()
        self.reset()  # moto's backend is one per process: start from an empty S3
        self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._proxy.daemon_threads = True
        threading.Thread(target=self._proxy.serve_forever, name="faulty-s3", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._moto is not None:
            self.reset()  # leave no buckets to the next test of this process
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> FaultyS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """Through the proxy (faults apply)."""
        assert self._proxy is not None, "not started"
        return f"http://127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def direct_url(self) -> str:
        """moto itself (no faults): for a test's own checks."""
        return f"http://127.0.0.1:{self._moto_port}"

    def reset(self) -> None:
        """Empty moto's S3 (every bucket of this process's moto backend)."""
        conn = http.client.HTTPConnection("127.0.0.1", self._moto_port, timeout=30)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()

    # ---- control --------------------------------------------------------------------------
    def fail_next(self, n: int, method: str | None = "GET", path_contains: str = "",
                  status: int = 500) -> None:
        """The next `n` requests with `method` (None: any) whose path contains `path_contains`
        get `status` (S3's XML error; 0: the connection is dropped unanswered)."""
        with self._lock:
            self._faults.append(Fault(n, method.upper() if method else None, path_contains, status))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        """Faults not served yet."""
        with self._lock:
            return sum(f.left for f in self._faults)

    def client(self, direct: bool = True):
        """A boto3 S3 client of moto (direct) or through the proxy."""
        import boto3

        return boto3.client("s3", endpoint_url=self.direct_url if direct else self.endpoint_url,
                            aws_access_key_id="test", aws_secret_access_key="test",
                            region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for f in self._faults:
                if f.left > 0 and f.method in (None, method) and f.path_contains in path:
                    f.left -= 1
                    self.served_faults += 1
                    return f
        return None


def _handler(s3: FaultyS3) -> type[BaseHTTPRequestHandler]:
    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args) -> None:  # quiet: one line per request otherwise
            log.debug("faulty-s3: " + fmt, *args)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return out
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            body = self._body()
            fault = s3._fault_for(self.command, self.path)
            if fault is not None and fault.status == 0:
                self.close_connection = True
                self.connection.close()
                return
            if fault is not None:
                code = _ERROR_CODES.get(fault.status, "InternalError")
                err = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>injected by FaultyS3</Message><RequestId>faulty</RequestId>"
                       "</Error>").encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(err)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(err)
                return
            upstream = http.client.HTTPConnection("127.0.0.1", s3._moto_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                upstream.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

    return Relay


@pytest.fixture
def faulty_s3(monkeypatch) -> Iterator[FaultyS3]:
    """A started FaultyS3 with the bucket "slt", and credentials in the environment for the
    code under test's own boto3 clients."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    with FaultyS3() as s3:
        s3.create_bucket("slt")
        yield s3
