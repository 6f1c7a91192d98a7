"""Container health check, standard library only (the image has no curl).

    python /opt/slt/bin/healthcheck.py [PATH]

What it checks depends on the container's main process (PID 1, which the entrypoint execs):
- redis-server: answers PING with PONG on 127.0.0.1:$REDIS_PORT (not while loading its AOF),
  after AUTH with the password of $SLT_REDIS_PASSWORD_FILE when that is set;
- the Celery worker: its broker ($SLT_REDIS_URL) answers PING, authenticated with the URL's
  password, else that of $SLT_REDIS_PASSWORD_FILE, as the worker itself does (the worker
  process is PID 1, so the container lives exactly as long as it does);
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


def command(*args: str) -> bytes:
    """One Redis command in RESP (any bytes in a password are safe, unlike the inline form)."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def password_file() -> str | None:
    path = os.environ.get("SLT_REDIS_PASSWORD_FILE")
    if not path:
        return None
    with open(path) as f:
        return f.readline().strip() or None


def redis_ping(host: str, port: int, password: str | None = None, timeout: float = 5.0) -> bool:
    with socket.create_connection((host, port), timeout=timeout) as s:
        if password:
            s.sendall(command("AUTH", password))
            reply = s.recv(256)
            if not reply.startswith(b"+OK"):
                print(f"AUTH refused: {reply.decode(errors='replace').strip()}")
                return False
        s.sendall(command("PING"))
        reply = s.recv(256)
        if not reply.startswith(b"+PONG"):
            print(f"PING answered: {reply.decode(errors='replace').strip()}")
        return reply.startswith(b"+PONG")


def main() -> int:
    cmd = pid1()
    try:
        if "redis-server" in cmd:
            ok = redis_ping("127.0.0.1", int(os.environ.get("REDIS_PORT", "6379")), password_file())
        elif "-m worker" in cmd or "celery" in cmd:
            url = urllib.parse.urlsplit(os.environ.get("SLT_REDIS_URL") or "redis://127.0.0.1:6379")
            ok = url.scheme != "redis" or redis_ping(  # TLS/sockets: not checked here
                url.hostname or "127.0.0.1", url.port or 6379,
                urllib.parse.unquote(url.password) if url.password else password_file())
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
