"""A real stack for integration tests: a redis-server, the API under uvicorn and Celery worker
processes (`python -m worker`), each a subprocess on a free port, sharing one SLT_HOME.

Searches are made cheap, not fake: a width-1/16 base, the random feature extractor
(SLT_SEARCH_FEATURES, for tests only), batch 2, and datasets of a couple dozen real emoji.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from store.connection import EmbeddedRedis, connect, free_port
from store.jobs import TERMINAL, JobStore
from trainer.masks import decode_mask

TOKEN = "test-admin-token"
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
ROOT = Path(__file__).resolve().parents[1]


def copy_images(src: Path, dest: Path, n: int = 24) -> Path:
    """n real emoji PNGs spread over the set, into a new folder."""
    files = sorted(src.glob("*.png"))
    dest.mkdir(parents=True)
    for f in files[:: max(1, len(files) // n)][:n]:
        shutil.copy(f, dest / f.name)
    return dest


def assert_catalog_intact(home: Path) -> list[str]:
    """Every file in the catalog decodes and hashes to its name; no temporary files."""
    masks = home / "masks"
    names = sorted(p.name for p in masks.iterdir()) if masks.is_dir() else []
    assert not [n for n in names if n.startswith(".")], f"temporary files left in the catalog: {names}"
    ids = []
    for name in names:
        if name.endswith(".safetensors"):
            mask = decode_mask((masks / name).read_bytes())
            assert f"{mask.mask_id}.safetensors" == name
            ids.append(mask.mask_id)
    return ids


class Stack:
    def __init__(self, home: Path, **env: str):
        self.home = home
        (home / "logs").mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(home / "redis").start()
        self.env = {**os.environ, "SLT_HOME": str(home), "SLT_REDIS_URL": self.redis.url,
                    "SLT_DEVICE": "cpu", "SLT_BASE": "width=0.0625", "SLT_SEARCH_FEATURES": "random",
                    "SLT_ADMIN_TOKEN": TOKEN, "SLT_EVAL_N": "0", "SLT_DEMO": "0",
                    "SLT_LEASE_S": "4", "SLT_CHECKPOINT_EVERY_S": "0.5", **env}
        self.api: subprocess.Popen | None = None
        self.url = ""
        self.workers: list[subprocess.Popen] = []
        self.replicas: list[subprocess.Popen] = []  # API replicas beside the first
        self.names: dict[int, str] = {}  # worker pid -> its log's name
        self.store = JobStore(connect(self.redis.url))

    # ---- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, module: str, env: dict) -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def start_api(self, timeout: float = 60, home: Path | None = None, name: str = "api") -> str:
        """The API on a free port; `home`: a replica with its own SLT_HOME (no shared disk),
        kept beside the first. Returns its URL."""
        port = free_port()
        env = {**self.env, "SLT_PORT": str(port), **({"SLT_HOME": str(home)} if home else {})}
        proc = self._spawn(name, "service", env)
        url = f"http://127.0.0.1:{port}"
        if home is None:
            self.api, self.url = proc, url
        else:
            self.replicas.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"API exited:\n{self.log(name)}"
            try:
                if httpx.get(url + "/jobs?limit=1", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"API not up in {timeout}s:\n{self.log(name)}")

    def start_worker(self, timeout: float = 90, home: Path | None = None) -> subprocess.Popen:
        """A worker process; `home`: on a "host" of its own SLT_HOME."""
        name = f"worker-{len(self.workers) + 1}"
        w = self._spawn(name, "worker", {**self.env, **({"SLT_HOME": str(home)} if home else {})})
        self.workers.append(w)
        self.names[w.pid] = name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert w.poll() is None, f"worker exited:\n{self.log(name)}"
            if f"slt-{w.pid}@" in self.log(name) and " ready." in self.log(name):
                return w
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log(name)}")

    def stop_worker(self, w: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if w.poll() is None:
            w.send_signal(sig)
        return w.wait(timeout)

    def log(self, name: str) -> str:
        p = self.home / "logs" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def close(self) -> None:
        procs = [p for p in (*self.workers, *self.replicas, self.api) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.redis.stop()

    # ---- HTTP ---------------------------------------------------------------------------
    def client(self, admin: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"} if admin else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def submit(self, dataset: str, domain: str | None = None, **config) -> str:
        body = {"domain": domain or dataset, "dataset": dataset, "preset": "demo",
                "config": {"batch_size": 2, **config}, "promote": True}
        with self.client() as c:
            r = c.post("/masks", json=body)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/jobs/{r.json()['job_id']}"
        return r.json()["job_id"]

    def job(self, job_id: str) -> dict:
        with self.client(admin=False) as c:
            r = c.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def mask(self, mask_id: str) -> dict:
        with self.client(admin=False) as c:
            r = c.get(f"/masks/{mask_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_evaluation(self, mask_id: str, timeout: float = 180) -> dict:
        """Poll GET /masks/{id} until the worker's evaluation of the mask shows there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.mask(mask_id)
            if info.get("evaluation"):
                return info
            time.sleep(0.25)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in self.names.values())
        raise AssertionError(f"mask {mask_id} not evaluated in {timeout}s: {self.mask(mask_id)}\n{logs}")

    def wait_job(self, job_id: str, until=lambda j: j["status"] in TERMINAL, timeout: float = 180,
                 seen: list | None = None) -> dict:
        """Poll GET /jobs/{id} until `until(job)`; every distinct record goes into `seen`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.job(job_id)
            if seen is not None and (not seen or seen[-1] != j):
                seen.append(j)
            if until(j):
                return j
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in self.names.values())
        raise AssertionError(f"job {job_id} did not get there in {timeout}s: {self.job(job_id)}\n{logs}")
