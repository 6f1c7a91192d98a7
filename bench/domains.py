"""Many domains on one replica: register N domains (each its own mask) in a real Redis, start
the API as its own process, and measure what it costs: Redis memory per domain, the replica's
start-up time and RSS, and GET /generate latency, through real HTTP, under a stream that
mixes a sweep over half of the registered domains (each asked once: a cold swap, fetched from
the shared store) with a Zipf stream over the first M (the hot ones).

    python -m bench.domains --domains 1000 --width 0.25
    python -m bench.domains --domains 10000 --width 0.25 --zipf-over 1000 --requests 2000

Each domain has its own mask bits (bench.mask_variants: one random k=0.1 mask with every
layer rolled by the domain's own offset), so each fetch decodes its own streams and the run
counts the distinct bits it registered.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.mask_variants import bits_sha256, variants
from bench.replica import replica
from store.blobs import RedisBlobs
from store.catalog import SharedCatalog
from store.connection import EmbeddedRedis, connect
from store.domains import DomainRegistry
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import SearchConfig, random_mask

log = logging.getLogger("bench.domains")


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def redis_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def register(client, home: Path, n: int, width: float) -> dict:
    """N masks, each with its own bits, in the shared catalog, each promoted to its own domain
    `d<i>`."""
    base = random_mask(BaseSpec(width=width), SearchConfig(k=0.1, seed=0, bn_batches=1), "0" * 64)
    catalog = SharedCatalog(client, RedisBlobs(client), MaskCatalog(home / "bench-writer"))
    registry = DomainRegistry(client)
    before = redis_memory(client)
    t0 = time.monotonic()
    size = 0
    bits: set[str] = set()
    for i, data in enumerate(tqdm(variants(base, n, domain="d"), total=n, desc="registering", unit="domain")):
        bits.add(bits_sha256(data))
        mask_id, _ = catalog.publish(data)
        catalog.drop_local(mask_id)  # the replica's disk starts empty: it fetches what it serves
        registry.promote(f"d{i}", mask_id, by="bench")
        size = len(data)
    return {"domains": n, "distinct_mask_bits": len(bits), "mask_file_bytes": size, "register_s": round(time.monotonic() - t0, 1),
            "redis_bytes_per_1000_domains": round((redis_memory(client) - before) / n * 1000),
            "redis_used_bytes": redis_memory(client)}


def zipf_stream(n_domains: int, count: int, s: float = 1.0, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_domains + 1) ** s
    return list(rng.choice(n_domains, size=count, p=w / w.sum()))


def request_stream(n_domains: int, zipf_over: int, count: int, seed: int = 0) -> list[int]:
    """A sweep over half of the registered domains (each once, in random order) shuffled
    together with `count` Zipf requests over the first `zipf_over`: the stream touches at
    least half of them, and the hot ones stay hot."""
    rng = np.random.default_rng(seed)
    sweep = rng.permutation(n_domains)[:(n_domains + 1) // 2].tolist()
    stream = sweep + [int(i) for i in zipf_stream(min(zipf_over, n_domains), count, seed=seed)]
    rng.shuffle(stream)
    return stream


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return 0.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--zipf-over", type=int, default=1000, help="the stream's domains (the first M)")
    ap.add_argument("--requests", type=int, default=1000,
                    help="Zipf requests, beside the sweep over half of the domains")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the replica serves")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="slt-bench-domains-") as tmp:
        home = Path(tmp) / "home"
        with EmbeddedRedis(Path(tmp) / "redis") as server:
            client = connect(server.url)
            out = register(client, home, args.domains, args.width)
            with replica(home / "replica", server.url, args.width,
                         SLT_DEVICE=args.device) as (api, url, startup_s):
                out["startup_s"] = round(startup_s, 2)
                out["rss_idle_bytes"] = rss_of(api.pid)
                stream = request_stream(args.domains, args.zipf_over, args.requests)
                lat: list[float] = []
                errors = 0

                def one(i: int) -> None:
                    nonlocal errors
                    t = time.perf_counter()
                    r = c.get("/generate", params={"domain": f"d{i}", "seed": 1})
                    lat.append(time.perf_counter() - t)
                    errors += r.status_code != 200

                with httpx.Client(base_url=url, timeout=120,
                                  limits=httpx.Limits(max_connections=args.clients)) as c, \
                        ThreadPoolExecutor(args.clients) as pool:
                    list(pool.map(one, stream))
                    prom = c.get("/metrics").text
                lat.sort()
                out.update(
                    zipf_over=min(args.zipf_over, args.domains), requests=len(lat), clients=args.clients,
                    errors=errors, distinct_domains_hit=len(set(stream)),
                    touched_share=round(len(set(stream)) / args.domains, 3),
                    generate_p50_ms=round(1000 * statistics.median(lat), 1),
                    generate_p99_ms=round(1000 * lat[int(0.99 * (len(lat) - 1))], 1),
                    cold_swaps=int(metric(prom, "slt_cache_misses_total")),
                    masks_in_ram=int(metric(prom, "slt_masks_in_ram")),
                    masks_ram_bytes=int(metric(prom, "slt_masks_ram_bytes")),
                    rss_after_bytes=rss_of(api.pid))
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
