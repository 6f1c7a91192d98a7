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
                        device_cache_bytes=1 << 40, admin_token=None,
                        max_wait_ms=0)  # no admission here: http_load measures that
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


def run_http(widths: tuple[float, ...] = (0.25, 1.0), requests: int = 60, flood_clients: int = 16,
             n_flood: int = 8, cache: Path | None = None) -> dict:
    """The same ratio through HTTP, on the API as its own process: a light domain's one-image
    requests (p99) while `flood_clients` closed-loop clients send n_flood-image requests to
    one other domain, then spread over 8 domains; the worst case per width is its `fairness`.
    A refused flood request (429) waits its Retry-After, as a polite client does."""
    import httpx

    from bench.replica import replica
    from store.blobs import RedisBlobs
    from store.catalog import SharedCatalog
    from store.connection import connect
    from store.domains import DomainRegistry
    from trainer.masks import MaskCatalog

    out: dict = {"fairness": {}, "fairness_http": {}}
    for width in widths:
        masks, _ = make_masks(f"width={width}", 9, cache or Path(tempfile.gettempdir()) / "slt-bench-masks")
        tmp = Path(tempfile.mkdtemp(prefix="slt-bench-fair-http-"))
        cases: dict = {}
        with EmbeddedRedis(tmp / "redis") as server:
            client = connect(server.url)
            catalog = SharedCatalog(client, RedisBlobs(client), MaskCatalog(tmp / "writer"))
            names = []
            for i, data in enumerate(masks):
                DomainRegistry(client).promote(f"fair{i}", catalog.publish(data)[0])
                names.append(f"fair{i}")
            light, heavy = names[0], names[1:]
            with replica(tmp / "home", server.url, width) as (_, url, _):
                refused = [0]
                with httpx.Client(base_url=url, timeout=120) as c:
                    for d in names:
                        c.get("/generate", params={"domain": d, "seed": 0}).raise_for_status()

                    def light_p99(seed: int, c=c, light=light, refused=refused) -> tuple[float, float]:
                        xs = []
                        for i in range(requests):
                            t = time.perf_counter()
                            while True:  # a refusal counts, and its wait is part of the latency
                                r = c.get("/generate", params={"domain": light, "seed": seed * 10_000 + i})
                                if r.status_code != 429:
                                    break
                                refused[0] += 1
                                time.sleep(float(r.headers.get("retry-after", "1")))
                            r.raise_for_status()
                            xs.append(time.perf_counter() - t)
                        return _p99(xs), sorted(xs)[len(xs) // 2]

                    alone = light_p99(1)
                    for case, targets in (("one_domain", heavy[:1]), ("eight_domains", heavy)):
                        stop = threading.Event()

                        def flood(k: int, stop=stop, targets=targets) -> None:
                            with httpx.Client(base_url=url, timeout=120) as fc:
                                i = 0
                                while not stop.is_set():
                                    try:
                                        r = fc.get("/generate", params={"domain": targets[(k + i) % len(targets)],
                                                                        "seed": 10**6 + k * 10**5 + i,
                                                                        "n": n_flood})
                                    except httpx.HTTPError:
                                        return
                                    if r.status_code == 429:
                                        time.sleep(float(r.headers.get("retry-after", "1")))
                                    i += 1

                        threads = [threading.Thread(target=flood, args=(k,), daemon=True)
                                   for k in range(flood_clients)]
                        for t in threads:
                            t.start()
                        time.sleep(2.0)
                        flooded = light_p99(2 + len(cases))
                        stop.set()
                        for t in threads:
                            t.join(120)
                        cases[case] = {"ratio": round(flooded[0] / alone[0], 2),
                                       "light_p99_ms_alone": round(1e3 * alone[0], 1),
                                       "light_p50_ms_alone": round(1e3 * alone[1], 1),
                                       "light_p99_ms_flooded": round(1e3 * flooded[0], 1),
                                       "light_p50_ms_flooded": round(1e3 * flooded[1], 1),
                                       "light_refused_429": refused[0]}
        key = f"width_{width:g}"
        out["fairness"][key] = max(v["ratio"] for v in cases.values())
        out["fairness_http"][key] = {**cases, "flood_clients": flood_clients,
                                     "flood_request_images": n_flood, "light_requests": requests}
    return out
