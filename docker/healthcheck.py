"""Container health check, standard library only (the image has no curl).

    python /opt/slt/bin/healthcheck.py [PATH]

What it checks depends on the container's main process (PID 1, which the entrypoint execs):
- redis-server: answers PING with PONG on 127.0.0.1:$REDIS_PORT (not while loading its AOF);
- the Celery worker: its broker ($SLT_REDIS_URL) answers PING (the worker process itself is
  PID 1, so the container lives exactly as long as it does);
- anything else (the API): GET http://127.0.0.1:$SLT_PORT{PATH} is 2xx; PATH defaults to
  /healthz (liveness); the compose file asks for /readyz.
Exit 0 healthy, 1 not.
"""
from __future__ import annotations

import os
import socket
import sys
import urllib.parse
import urllib.request


def pid1() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def redis_ping(host: str, port: int, password: str | None = None, timeout: float = 5.0) -> bool:
    with socket.create_connection((host, port), timeout=timeout) as s:
        if password:
            s.sendall(f"AUTH {password}\r\n".encode())
            if not s.recv(64).startswith(b"+OK"):
                return False
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def main() -> int:
    cmd = pid1()
    try:
        if "redis-server" in cmd:
            ok = redis_ping("127.0.0.1", int(os.environ.get("REDIS_PORT", "6379")))
        elif "-m worker" in cmd or "celery" in cmd:
            url = urllib.parse.urlsplit(os.environ.get("SLT_REDIS_URL") or "redis://127.0.0.1:6379")
            ok = url.scheme != "redis" or redis_ping(  # TLS/sockets: not checked here
                url.hostname or "127.0.0.1", url.port or 6379, url.password)
        else:
            path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
            port = os.environ.get("SLT_PORT", "8000")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=8) as r:
                ok = 200 <= r.status < 300
    except Exception as e:  # noqa: BLE001 - any failure is "unhealthy", with the reason shown
        print(f"unhealthy: {type(e).__name__}: {e}")
        return 1
    print("healthy" if ok else "unhealthy")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
