"""A real API server for tests: uvicorn on a loopback port in a thread (or a subprocess for a
second replica), a real Redis, a tiny base, and random masks made by the trainer."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from service.admission import PacedHttpToolsProtocol
from service.app import create_app
from service.settings import Settings, parse_base
from store.connection import free_port
from trainer.generator import BaseSpec
from trainer.masks import decode_mask
from trainer.search import SearchConfig, random_mask
from trainer.ticket import build_ticket, generate, grid

TINY = "width=0.0625"  # channels 64..4: a full forward pass takes milliseconds
TOKEN = "test-admin-token"
THREADS = 2  # the server's inference lanes; each forward pass runs on one thread
ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=32)
def make_mask(k: float = 0.5, seed: int = 0, domain: str = "", base: str = TINY) -> bytes:
    """A random mask at k over the tiny base, with real BN statistics (a few batches)."""
    cfg = SearchConfig(k=k, seed=seed, bn_batches=2)
    return random_mask(parse_base(base), cfg, dataset_sha="0" * 64, domain=domain)


def reference(mask_bytes: bytes, seed: int, n: int, base: str = TINY) -> np.ndarray:
    """The independent reference: the trainer's ticket (base x mask, eval BN) and generate(),
    on one thread, as the service documents its arithmetic (service/engine.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = build_ticket(decode_mask(mask_bytes), spec=parse_base(base))
        return generate(g, seed, n)
    finally:
        torch.set_num_threads(old)


def reference_grid(images: np.ndarray) -> np.ndarray:
    return np.asarray(grid(images))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def settings_for(home: Path, redis_url: str, **overrides) -> Settings:
    values = dict(home=home, redis_url=redis_url, admin_token=TOKEN, base=TINY, device="cpu",
                  torch_threads=THREADS, batch_window_ms=5.0, max_batch=32, queue_limit=256,
                  max_n=64, max_wait_ms=0)  # every request served: admission is tested on its own
    values.update(overrides)
    return Settings(**values)


class LiveServer:
    """uvicorn serving `create_app(settings)` in a thread of this process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on",
                                                    http=PacedHttpToolsProtocol))  # as python -m service
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def engine(self):
        return self.app.state.core.engine

    def client(self, admin: bool = False, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"} if admin else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def start(self, timeout: float = 60) -> LiveServer:
        self.thread.start()
        wait_ready(self.url, timeout, lambda: self.thread.is_alive())
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_ready(url: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {url} died while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout}s")


class ReplicaProcess:
    """A second API replica: `uvicorn --factory service.app:app` in its own process."""

    def __init__(self, home: Path, redis_url: str, base: str = TINY, threads: int = THREADS):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, SLT_HOME=str(home), SLT_REDIS_URL=redis_url,
                        SLT_ADMIN_TOKEN=TOKEN, SLT_BASE=base, SLT_DEVICE="cpu",
                        SLT_TORCH_THREADS=str(threads))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ReplicaProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "service.app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"], cwd=ROOT, env=self.env)
        try:
            wait_ready(self.url, 120, lambda: self.proc.poll() is None)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def tiny_spec() -> BaseSpec:
    return parse_base(TINY)
