"""Fairness under a flood, through the engine: the p99 latency of a light domain's requests
while another domain floods the queue, over its p99 with no flood (target <= 3).

The light client sends one request of n images at a time, `requests` times; the flood is
`flood_clients` closed-loop clients on another domain, each with a request of n_flood images
always in the queue.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from bench.serving import Bench, make_masks
from service.settings import Settings
from store.connection import EmbeddedRedis


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def run(width: float = 0.25, requests: int = 60, n: int = 1, flood_clients: int = 16,
        n_flood: int = 8, max_batch: int = 32, cache: Path | None = None) -> dict:
    masks, _ = make_masks(f"width={width}", 2, cache or Path(tempfile.gettempdir()) / "slt-bench-masks")
    tmp = Path(tempfile.mkdtemp(prefix="slt-bench-fair-"))
    redis = EmbeddedRedis(tmp / "redis").start()
    settings = Settings(home=tmp / "home", redis_url=redis.url, base=f"width={width}", device="cpu",
                        max_batch=max_batch, batch_window_ms=5, queue_limit=1 << 20,
                        device_cache_bytes=1 << 40, admin_token=None)
    b = Bench(settings)
    try:
        e = b.engine
        light, heavy = (e.import_mask(m)[0].mask_id for m in masks)
        for m in (light, heavy):  # both resident: the flood measures queueing, not swaps
            e.submit(m, 0, 2).result()

        def light_client(seed: int) -> list[float]:
            out = []
            for i in range(requests):
                t = time.perf_counter()
                e.submit(light, seed * 10_000 + i, n).result()
                out.append(time.perf_counter() - t)
            return out

        alone = light_client(1)
        stop = threading.Event()
        flooded_images = [0]

        def flood(c: int) -> None:
            i = 0
            while not stop.is_set():
                e.submit(heavy, 1_000_000 + c * 100_000 + i, n_flood).result()
                flooded_images[0] += n_flood
                i += 1

        threads = [threading.Thread(target=flood, args=(c,), daemon=True) for c in range(flood_clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the queue fills
        depth = e.queue_depth()
        flooded = light_client(2)
        stop.set()
        for t in threads:
            t.join()
    finally:
        b.close()
        redis.stop()
    return {"fairness": _p99(flooded) / _p99(alone),
            "fairness_detail": {"light_p50_ms_alone": round(1e3 * sorted(alone)[len(alone) // 2], 1),
                                "light_p50_ms_flooded": round(1e3 * sorted(flooded)[len(flooded) // 2], 1),
                                "light_p99_ms_alone": round(1e3 * _p99(alone), 1),
                                "light_p99_ms_flooded": round(1e3 * _p99(flooded), 1),
                                "queue_images_during_flood": depth, "flood_clients": flood_clients,
                                "flood_request_images": n_flood, "light_requests": requests,
                                "width": width, "max_batch": max_batch}}
