"""`make run`'s launcher on a Redis with a password (SLT_REDIS_PASSWORD_FILE) and a private
deployment (SLT_READ_TOKEN): it passes the authenticated URL to the worker and the API, sees the
API come up through the token, prints its banner, and the API answers reads only with a token."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from store.connection import EmbeddedRedis, connect, free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_launcher_starts_on_a_redis_with_a_password_and_a_private_api(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("launcher-redis-secret\n")
    with EmbeddedRedis(tmp_path / "redis") as server:
        connect(server.url).config_set("requirepass", "launcher-redis-secret")
        home, port = tmp_path / "home", free_port()
        env = {**os.environ, "SLT_HOME": str(home), "SLT_PORT": str(port), "SLT_DEMO": "0",
               "SLT_DEVICE": "cpu", "SLT_BASE": "width=0.0625", "SLT_EVAL_N": "0",
               "SLT_REDIS_URL": server.url, "SLT_REDIS_PASSWORD_FILE": str(secret),
               "SLT_ADMIN_TOKEN": "launcher-admin", "SLT_READ_TOKEN": "launcher-reader"}
        log = open(tmp_path / "launcher.log", "wb")
        launcher = subprocess.Popen([sys.executable, "-m", "service.launcher"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        text = lambda: (tmp_path / "launcher.log").read_text(errors="replace")  # noqa: E731
        try:
            deadline = time.monotonic() + 110  # below the launcher's own 120 s wait
            while "Ctrl-C stops everything" not in text():
                assert launcher.poll() is None and time.monotonic() < deadline, text()
                time.sleep(0.3)
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/jobs").status_code == 401
            r = httpx.get(f"{base}/jobs", headers={"Authorization": "Bearer launcher-reader"})
            assert r.status_code == 200, r.text
            # the worker reached the passworded Redis too: Celery says ready once its broker answers
            while " ready." not in text():
                assert launcher.poll() is None and time.monotonic() < deadline + 60, text()
                time.sleep(0.3)
            assert "launcher-redis-secret" not in text()
            launcher.send_signal(signal.SIGINT)
            assert launcher.wait(90) == 0, text()
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
