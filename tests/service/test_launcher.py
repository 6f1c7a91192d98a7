"""`make run`'s launcher: starts Redis, a worker and the API; restarts a dead worker; SIGINT
stops every process it started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.launcher import admin_token
from service.settings import Settings
from store.connection import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def pids_of(home: Path, redis_addr: str = "never") -> set[int]:
    """Every live process whose environment says SLT_HOME=home, and the redis-server on
    `redis_addr` (it rewrites its environment with its process title)."""
    needle, title = f"SLT_HOME={home}".encode(), f"127.0.0.1:{redis_addr}".encode()
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                if needle in (d / "environ").read_bytes().split(b"\0") or (b"redis-server" in cmd and title in cmd):
                    found.add(int(d.name))
            except OSError:
                pass
    return found


def test_admin_token_is_made_once_private_and_reused(tmp_path):
    s = Settings(home=tmp_path)
    token, where = admin_token(s)
    assert len(token) >= 32 and "(new)" in where
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert admin_token(s)[0] == token
    assert admin_token(Settings(home=tmp_path, admin_token="given"))[0] == "given"


def test_launcher_runs_restarts_and_stops_everything(tmp_path):
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "SLT_HOME": str(home), "SLT_PORT": str(port), "SLT_DEMO": "0",
           "SLT_DEVICE": "cpu", "SLT_BASE": "width=0.0625", "SLT_EVAL_N": "0"}
    env.pop("SLT_REDIS_URL", None)
    env.pop("SLT_ADMIN_TOKEN", None)
    log = open(tmp_path / "launcher.log", "wb")
    launcher = subprocess.Popen([sys.executable, "-m", "service.launcher"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    text = lambda: (tmp_path / "launcher.log").read_text(errors="replace")  # noqa: E731
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in text():
            assert launcher.poll() is None and time.monotonic() < deadline, text()
            time.sleep(0.3)
        token = (home / "admin-token").read_text().strip()
        assert token in text() and f"http://127.0.0.1:{port}/admin" in text()
        r = httpx.post(f"http://127.0.0.1:{port}/masks", json={"domain": "d", "dataset": "nope"},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404  # the API runs, with the printed token
        redis_addr = (home / "redis" / "url").read_text().split("//")[1].split("/")[0].split(":")[1]
        children = pids_of(home, redis_addr) - {launcher.pid}
        assert len(children) >= 3  # redis, worker, api

        worker = next(int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in text().splitlines()
                      if "worker-1 started (pid" in line)
        os.kill(worker, signal.SIGKILL)
        while text().count("worker-1 started (pid") < 2:
            assert time.monotonic() < deadline + 60, text()
            time.sleep(0.3)

        launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert launcher.wait(90) == 0, text()
        assert pids_of(home, redis_addr) == set(), text()
        assert "stopped" in text()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        for pid in pids_of(home):
            os.kill(pid, signal.SIGKILL)
