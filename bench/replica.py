"""An API replica as its own process for the HTTP benchmarks: started on a free port against a
given Redis, waited for until `/readyz` answers 200."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from store.connection import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def replica(home: Path, redis_url: str, width: float, timeout_s: float = 120.0,
            **env: str) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """(process, URL, seconds from start to ready) of `python -m service` on base `width`;
    `env`: further SLT_* settings. Stopped on exit."""
    port = free_port()
    env = {**os.environ, "SLT_HOME": str(home), "SLT_REDIS_URL": redis_url,
           "SLT_BASE": f"width={width}", "SLT_PORT": str(port), "SLT_DEMO": "0",
           "SLT_DEVICE": "cpu", "SLT_LOG_LEVEL": "warning", **env}
    t0 = time.monotonic()
    api = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if api.poll() is not None:
                raise RuntimeError(f"the API exited with {api.returncode} before it was ready")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"the API was not ready within {timeout_s:g} s")
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield api, url, time.monotonic() - t0
    finally:
        api.terminate()
        api.wait(30)
