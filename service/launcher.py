"""`make run`: the whole service on one machine, in the foreground.

Starts the embedded Redis (persistent under $SLT_HOME/redis; or uses SLT_REDIS_URL), SLT_WORKERS
worker processes (`python -m worker`) and the API (`python -m service`), restarts any of them
that dies, and on Ctrl-C (SIGINT) or SIGTERM stops them all: workers first (a running search
hands its job back to the queue, to resume from its checkpoint on the next start), then the
API, then Redis. Each child runs in its own process group and also gets SIGTERM if this
process is killed outright, so nothing outlives it.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from service.settings import Settings, get_settings
from store.connection import EmbeddedRedis, die_with_parent, local_redis

log = logging.getLogger("slt.launcher")

TOKEN_FILE = "admin-token"
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = {"worker": 60.0, "api": 15.0}  # a worker finishes its current search step first


def admin_token(settings: Settings) -> tuple[str, str]:
    """(token, where it came from): SLT_ADMIN_TOKEN, else $SLT_HOME/admin-token, made once (0600)."""
    if settings.admin_token:
        return settings.admin_token, "SLT_ADMIN_TOKEN"
    path = settings.home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token, str(path)
        path.unlink()  # an empty file from an interrupted first start
        return admin_token(settings)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), f"{path} (new)"


class Child:
    """A supervised child process with restart backoff."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.quick_deaths = 0  # deaths soon after a start, in a row
        self.next_start = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.started = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def supervise(self) -> None:
        """Restart a dead child; one that keeps dying right away is restarted ever more slowly."""
        if self.alive():
            return
        now = time.monotonic()
        if self.proc is not None:
            self.quick_deaths = self.quick_deaths + 1 if now - self.started < 60 else 0
            self.next_start = now + min(60.0, 2.0 ** self.quick_deaths - 1)
            log.warning("%s exited with %s; restarting in %.0f s", self.name, self.proc.returncode,
                        self.next_start - now)
            self.proc = None
        if now >= self.next_start:
            self.start()

    def terminate(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Launcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.stopping = threading.Event()
        self.redis: EmbeddedRedis | None = None

    def run(self) -> int:
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        token, token_from = admin_token(s)
        url = s.redis_url
        if not url:  # one already serving this home (left by a lone worker) is shared, not doubled
            url, self.redis = local_redis(s.redis_dir)
        env = {**os.environ, "SLT_HOME": str(s.home), "SLT_REDIS_URL": url, "SLT_ADMIN_TOKEN": token}
        py = sys.executable
        workers = [Child(f"worker-{i + 1}", [py, "-m", "worker"], env) for i in range(s.workers)]
        api = Child("api", [py, "-m", "service"], env)
        children = [*workers, api]
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            for c in children:
                c.start()
            if self._wait_ready(api, token):
                self._banner(token, token_from)
            while not self.stopping.wait(1.0):
                for c in children:
                    c.supervise()
                self._supervise_redis()
        finally:
            self._stop(workers, api)
        return 0

    def _on_signal(self, signum: int, frame) -> None:
        if self.stopping.is_set():
            return
        log.info("%s: stopping everything (workers hand their jobs back first)",
                 signal.Signals(signum).name)
        self.stopping.set()

    def _base_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::", "") else self.settings.host
        return f"http://{host}:{self.settings.port}"

    def _wait_ready(self, api: Child, token: str) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        # the admin token: a private deployment (SLT_READ_TOKEN) answers reads only with a token
        request = urllib.request.Request(self._base_url() + "/jobs?limit=1",
                                         headers={"Authorization": f"Bearer {token}"})
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            if not api.alive():
                log.error("the API exited during start-up (code %s); see its log above", api.proc.returncode)
                return False
            time.sleep(0.5)
        return False

    def _banner(self, token: str, token_from: str) -> None:
        base = self._base_url()
        demo = ("SLT_DEMO=1: a first start serves the shipped demo masks and queues one demo search per demo dataset; "
                f"follow them at {base}/jobs" if self.settings.demo else "SLT_DEMO=0: no demo searches")
        for line in ("", "slt-serve is running", f"  Dashboard    {base}/admin",
                     f"  API docs     {base}/docs", f"  Admin token  {token}   (from {token_from})",
                     f"  Data         {self.settings.home}",
                     f"  Base         {self.settings.base_spec.to_json()}", f"  {demo}", "  Ctrl-C stops everything.", ""):
            log.info(line)

    def _supervise_redis(self) -> None:
        if self.redis is not None and (self.redis.proc is None or self.redis.proc.poll() is not None):
            log.warning("embedded redis exited; restarting it on the same port (its data is on disk)")
            self.redis = EmbeddedRedis(self.redis.root, port=self.redis.port).start()

    def _stop(self, workers: list[Child], api: Child) -> None:
        for group, timeout in ((workers, STOP_TIMEOUT_S["worker"]), ([api], STOP_TIMEOUT_S["api"])):
            for c in group:
                c.terminate()
            for c in group:
                c.wait(timeout)
        if self.redis is not None:
            self.redis.stop()
        log.info("stopped")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher: %(message)s")
    return Launcher(get_settings()).run()


if __name__ == "__main__":
    sys.exit(main())
