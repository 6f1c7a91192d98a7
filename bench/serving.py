"""Serving benchmark, through the generation engine (no HTTP): throughput of one domain, of a
stream mixing 8 domains (uniform and Zipf), of one mixing more domains than the device cache
holds (so the stream evicts), and of the same network run dense; a never-seen domain's first
image end to end (fetch from the shared store, decode and verify, build, first pass), what that
adds over the same image of a resident domain, and the build alone; the added time of a warm
domain switch; the bytes each extra domain holds in RAM and on the device.

    python bench/serving.py                    # the default base (width 1), about 10 min on 2 cores
    python bench/serving.py --width 0.0625     # the tiny test base, seconds

Streams are run interleaved, round after round, and reported as medians, so a noisy machine
shifts every stream alike and the ratios stay meaningful. Absolute figures hold for the device
printed in the header only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mask_variants import variants  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.state import AppState  # noqa: E402
from store.catalog import SharedCatalog, decode_untrusted  # noqa: E402
from store.connection import EmbeddedRedis  # noqa: E402
from trainer.generator import latents  # noqa: E402
from trainer.masks import MaskCatalog  # noqa: E402
from trainer.search import SearchConfig, random_mask  # noqa: E402

log = logging.getLogger("bench.serving")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_masks(spec_text: str, n: int, cache: Path) -> tuple[list[bytes], bytes]:
    """n random masks at k=0.1 and one at k=1 (the dense network), with real BN statistics of
    one batch; cached, since at width 1 each takes a few seconds."""
    from service.settings import parse_base

    spec = parse_base(spec_text)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i, k in [(i, 0.1) for i in range(n)] + [(n, 1.0)]:
        p = cache / f"{spec.arch}-w{spec.width}-s{spec.seed}-{spec.init}-k{k}-m{i}.safetensors"
        if not p.exists():
            t0 = time.monotonic()
            p.write_bytes(random_mask(spec, SearchConfig(k=k, seed=100 + i, bn_batches=1), "0" * 64,
                                      domain=f"bench-{i}"))
            log.info("made mask %s in %.1f s", p.name, time.monotonic() - t0)
        out.append(p.read_bytes())
    return out[:-1], out[-1]


class Bench:
    def __init__(self, settings: Settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.state = AppState(settings)
        self.run(self.state.start())
        self.engine = self.state.engine
        while not self.engine.ready:
            time.sleep(0.05)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.run(self.state.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)

    def stream(self, masks: list[str], weights: list[float] | None, clients: int, n: int,
               images: int, seed: int) -> float:
        """Closed loop: `clients` threads each send a request of n images, wait, repeat, until
        `images` are made; each request's mask drawn from `masks` (by `weights`). images/s."""
        rnd = random.Random(seed)
        plan = [rnd.choices(masks, weights)[0] for _ in range(images // n)]
        it = iter(enumerate(plan))
        lock = threading.Lock()

        def client():
            while True:
                with lock:
                    nxt = next(it, None)
                if nxt is None:
                    return
                i, m = nxt
                self.engine.submit(m, seed * 100_000 + i, n).result()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(client) for _ in range(clients)]:
                f.result()
        return len(plan) * n / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a CUDA timing covers the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def publish_fresh(b: Bench, template: bytes, n: int, start: int, home: Path) -> list[tuple[str, str]]:
    """n never-seen domains, each its own mask (distinct bits) published to the shared store by
    another host (a writer catalog of its own), so this replica has it neither in RAM nor on
    disk: [(domain, mask_id)]."""
    writer = SharedCatalog(b.state.redis, b.state.catalog.blobs, MaskCatalog(home / "writer"))
    out = []
    for i, data in enumerate(variants(template, n, start, domain="cold-")):
        mask_id, _ = writer.publish(data)
        writer.drop_local(mask_id)
        name = f"cold-{start + i}"
        b.state.domains.promote(name, mask_id, by="bench")
        out.append((name, mask_id))
    return out


def cold_first_images(b: Bench, domains: list[tuple[str, str]]) -> tuple[list[float], list[float]]:
    """Seconds from asking for a never-seen domain's first image to having it, through the
    replica's own path (resolve the domain, fetch the file from the shared store, decode and
    verify it, keep it on disk, build base x mask on the device, one pass), each followed by
    the same request again, now warm: (cold, warm). cold - warm is what the swap adds."""
    cold, warm = [], []
    for name, _ in domains:
        for out in (cold, warm):
            t0 = time.perf_counter()
            b.run(b.engine.generate(name, 1, 1))
            out.append(time.perf_counter() - t0)
    return cold, warm


def cold_breakdown(b: Bench, domains: list[tuple[str, str]]) -> dict[str, float]:
    """Where a cold first image's time goes, step by step on other never-seen masks (median
    ms of each step). The build writes into buffers already mapped, as the engine's does
    (its spare, made ready while idle); the first pass is followed by a warm one."""
    e = b.engine
    steps: dict[str, list[float]] = {k: [] for k in ("fetch", "decode_verify", "keep_on_disk", "build",
                                                     "first_pass", "warm_pass")}
    z = latents(1, 0, 1, e.spec.nz)
    buffers = None
    for _, mask_id in domains:
        t0 = time.perf_counter()
        data = e.catalog.blobs.get(mask_id)
        t1 = time.perf_counter()
        mask = decode_untrusted(data)
        e.verify(mask)
        t2 = time.perf_counter()
        e.catalog.local.add(data, mask=mask)
        t3 = time.perf_counter()
        w = buffers = e.build_weights(mask, out=buffers)
        sync(e.device)
        t4 = time.perf_counter()
        e._forward(w, z)
        sync(e.device)
        t5 = time.perf_counter()
        e._forward(w, z)
        sync(e.device)
        t6 = time.perf_counter()
        for k, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            steps[k].append(dt)
    return {k: round(1e3 * median(v), 2) for k, v in steps.items()}


def main(argv=None) -> dict:
    return run(parse(argv))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--images", type=int, default=0, help="images per stream and round (default by width)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="images per request")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the engine serves")
    ap.add_argument("--switch-pairs", type=int, default=40)
    ap.add_argument("--cold-domains", type=int, default=6,
                    help="never-seen domains timed end to end (and as many for the breakdown)")
    ap.add_argument("--resident-domains", type=int, default=3,
                    help="device cache bound, in domains, of the stream that evicts")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("SLT_HOME", "var")) / "cache" / "bench")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    images = args.images or (128 if args.width >= 0.5 else 1024)
    base = f"width={args.width}"

    masks, dense = make_masks(base, args.domains, args.cache)
    tmp = Path(tempfile.mkdtemp(prefix="slt-bench-"))
    redis = EmbeddedRedis(tmp / "redis").start()
    settings = Settings(home=tmp / "home", redis_url=redis.url, base=base, device=args.device,
                        torch_threads=args.threads, max_batch=args.max_batch, batch_window_ms=5,
                        queue_limit=1 << 20, device_cache_bytes=1 << 40, admin_token=None,
                        max_wait_ms=0)  # no admission here: http_load measures that
    rss0 = rss_bytes()
    b = Bench(settings)
    e = b.engine
    rss_base = rss_bytes()
    print(f"# serving benchmark: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {e.threads} torch threads, "
          f"device {e.device}; base width {args.width} ({sum(p.numel() for p in e.base.parameters()):,} "
          f"parameters), max_batch {args.max_batch}, {args.clients} clients x n={args.n}")

    # RAM per extra domain: packed bits (+ BN statistics) held for every known mask
    ram0, rss_a = e.ram_bytes(), rss_bytes()
    ids = [e.import_mask(m)[0].mask_id for m in masks]
    dense_id = e.import_mask(dense)[0].mask_id
    per_mask_ram = (e.ram_bytes() - ram0) / (len(ids) + 1)
    rss_masks = (rss_bytes() - rss_a) / (len(ids) + 1)

    # device bytes per resident domain, and the cold switch: building base x mask on the device
    cold = []
    for m in ids[:3] * 4:
        mf = e.load_mask(m)
        t0 = time.perf_counter()
        w = e.build_weights(mf)
        sync(e.device)
        cold.append(time.perf_counter() - t0)
    device_bytes = sum(t.numel() * t.element_size() for t in w.values())
    recycled = []  # at a full cache: built into the buffers of the entry just evicted
    for m in ids[3:6] * 4:
        mf = e.load_mask(m)
        t0 = time.perf_counter()
        w = e.build_weights(mf, out=w)
        sync(e.device)
        recycled.append(time.perf_counter() - t0)
    del w
    # a never-seen domain's first image, end to end, and where its time goes
    fresh = publish_fresh(b, masks[0], 2 * args.cold_domains, 0, tmp)
    time.sleep(0.5)  # the lanes idle, as between requests: the spare buffers made ready
    cold_e2e, warm_e2e = cold_first_images(b, fresh[:args.cold_domains])
    added = [c - w for c, w in zip(cold_e2e, warm_e2e)]
    breakdown = cold_breakdown(b, fresh[args.cold_domains:])
    log.info("cold first image %.1f ms median, %.1f ms over the same image warm; parts (ms): %s",
             1e3 * median(cold_e2e), 1e3 * median(added), breakdown)
    rss_b = rss_bytes()
    for m in ids + [dense_id]:  # make every domain resident for the streams
        e.submit(m, 0, 2).result()
    rss_resident = (rss_bytes() - rss_b) / (len(ids) + 1)

    # warm switch: after a pass on mask a, a 2-image pass on a again vs on resident mask b;
    # paired differences, so load that drifts over the run cancels out
    same, diff = [], []
    z = latents(7, 0, 2, e.spec.nz)
    wa, wb = e._weights(ids[0], set()), e._weights(ids[1], set())
    for _ in range(3):  # warm-up
        e._forward(wa, z)
    for _ in range(args.switch_pairs):
        e._forward(wa, z)
        sync(e.device)
        t0 = time.perf_counter()
        e._forward(wa, z)
        sync(e.device)
        t1 = time.perf_counter()
        e._forward(wb, z)
        sync(e.device)
        t2 = time.perf_counter()
        same.append(t1 - t0)
        diff.append((t2 - t1) - (t1 - t0))
    lookup = []
    for i in range(1000):
        t0 = time.perf_counter()
        e._weights(ids[i % 2], set())
        lookup.append(time.perf_counter() - t0)

    # throughput streams, interleaved
    zipf = [1 / (i + 1) for i in range(len(ids))]
    streams = {"one domain": ([ids[0]], None), f"{len(ids)} domains, uniform": (ids, None),
               f"{len(ids)} domains, Zipf (p ~ 1/i)": (ids, zipf), "dense (k=1) through the engine": ([dense_id], None)}
    rates: dict[str, list[float]] = {k: [] for k in streams}
    b.stream([ids[0]], None, args.clients, args.n, min(images, 64), 999)  # warm-up
    order = list(streams)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)  # no stream always runs first in a round
        for name in order:
            ms, wts = streams[name]
            rates[name].append(b.stream(ms, wts, args.clients, args.n, images, r + 1))
            log.info("round %d %-36s %.2f images/s", r + 1, name, rates[name][-1])
    # the plain module, no engine, at the batch the engine runs
    raw = []
    zb = latents(3, 0, args.max_batch, e.spec.nz).to(e.device)
    with torch.inference_mode():
        for _ in range(args.rounds):
            sync(e.device)
            t0 = time.perf_counter()
            e.base(zb)
            sync(e.device)
            raw.append(args.max_batch / (time.perf_counter() - t0))

    b.close()

    # more domains than the device cache holds: the stream evicts, and rebuilds what it needs
    bounded = settings.model_copy(update={"home": tmp / "home-bounded",
                                          "device_cache_bytes": args.resident_domains * device_bytes})
    b2 = Bench(bounded)
    e2 = b2.engine
    over = {"one domain": ([ids[0]], None), f"{len(ids)} domains, uniform, {args.resident_domains} "
            "fit on the device": (ids, None)}
    over_rates: dict[str, list[float]] = {k: [] for k in over}
    evictions = 0.0
    b2.stream([ids[0]], None, args.clients, args.n, min(images, 64), 998)  # warm-up
    for r in range(args.rounds):
        for name, (ms, wts) in (over.items() if r % 2 == 0 else reversed(over.items())):
            before = e2.metrics.registry.get_sample_value("slt_cache_evictions_total") or 0.0
            over_rates[name].append(b2.stream(ms, wts, args.clients, args.n, images, r + 1))
            if len(ms) > 1:
                evictions += (e2.metrics.registry.get_sample_value("slt_cache_evictions_total") or 0.0) - before
            log.info("round %d %-36s %.2f images/s", r + 1, name, over_rates[name][-1])
    over_name = list(over)[1]
    b2.close()

    one = median(rates["one domain"])
    res = {
        "device": str(e.device), "cpus": os.cpu_count(), "torch_threads": e.threads,
        "width": args.width, "parameters": sum(p.numel() for p in e.base.parameters()),
        "images_per_s": {k: median(v) for k, v in rates.items()},
        "images_per_s_best": {k: max(v) for k, v in rates.items()},
        "images_per_s_rounds": rates,
        "plain_module_images_per_s": median(raw),
        "ratio_masked_vs_dense": one / median(rates["dense (k=1) through the engine"]),
        "ratio_mixed_uniform_vs_one": median(rates[f"{len(ids)} domains, uniform"]) / one,
        "ratio_mixed_zipf_vs_one": median(rates[f"{len(ids)} domains, Zipf (p ~ 1/i)"]) / one,
        "cold_first_image_ms": 1e3 * median(cold_e2e),
        "cold_first_image_best_ms": 1e3 * min(cold_e2e),
        "cold_first_image_all_ms": [round(1e3 * x, 1) for x in cold_e2e],
        "cold_added_ms": 1e3 * median(added),  # the swap's cost end to end: cold - the same image warm
        "cold_added_best_ms": 1e3 * min(added),
        "cold_added_all_ms": [round(1e3 * x, 1) for x in added],
        "warm_image_ms": 1e3 * median(warm_e2e),
        "cold_first_image_parts_ms": breakdown,
        "cold_switch_ms": 1e3 * median(cold),
        "cold_switch_full_cache_ms": 1e3 * median(recycled),
        "cold_switch_best_ms": 1e3 * min(cold),
        "cold_switch_full_cache_best_ms": 1e3 * min(recycled),
        "warm_switch_added_ms": 1e3 * median(diff),
        "warm_switch_lookup_us": 1e6 * median(lookup),
        "request_2_images_ms": 1e3 * median(same),
        "over_capacity": {"stream": over_name, "domains": len(ids), "resident_domains": args.resident_domains,
                          "images_per_s": median(over_rates[over_name]),
                          "one_domain_images_per_s": median(over_rates["one domain"]),
                          "evictions": int(evictions), "rounds": over_rates},
        "ram_bytes_per_domain_packed": per_mask_ram,
        "ram_rss_per_domain_loaded": rss_masks,
        "device_bytes_per_resident_domain": device_bytes,
        "rss_per_resident_domain": rss_resident,
        "rss_engine_start": rss_base - rss0,
    }
    print(f"images/s (median and best of {args.rounds} rounds of {images} images):")
    for k, v in res["images_per_s"].items():
        print(f"  {k:<40} {v:8.2f} {res['images_per_s_best'][k]:8.2f}")
    print(f"  {'plain module, batch ' + str(args.max_batch):<40} {res['plain_module_images_per_s']:8.2f}")
    print(f"ratios: masked/dense {res['ratio_masked_vs_dense']:.3f}, "
          f"8-domain uniform/one {res['ratio_mixed_uniform_vs_one']:.3f}, "
          f"Zipf/one {res['ratio_mixed_zipf_vs_one']:.3f}")
    print(f"domain switch: cold {res['cold_switch_ms']:.1f} ms median, {res['cold_switch_best_ms']:.1f} "
          f"best (base x mask built on {e.device}; at a full cache, into evicted buffers: "
          f"{res['cold_switch_full_cache_ms']:.1f} / {res['cold_switch_full_cache_best_ms']:.1f} ms); "
          f"warm {res['warm_switch_added_ms']:+.2f} ms (median paired difference) on a "
          f"{res['request_2_images_ms']:.1f} ms 2-image pass (cache lookup {res['warm_switch_lookup_us']:.1f} us)")
    print(f"per extra domain: {res['ram_bytes_per_domain_packed'] / 1e6:.3f} MB packed in RAM "
          f"(RSS +{res['ram_rss_per_domain_loaded'] / 1e6:.2f} MB), "
          f"{res['device_bytes_per_resident_domain'] / 1e6:.1f} MB when resident on the device "
          f"(RSS +{res['rss_per_resident_domain'] / 1e6:.1f} MB)")
    print(f"cold swap end to end (fetch, decode, verify, build; a never-seen domain's first image "
          f"less the same image warm): {res['cold_added_ms']:.1f} ms median, {res['cold_added_best_ms']:.1f} "
          f"best; the first image {res['cold_first_image_ms']:.1f} ms, warm {res['warm_image_ms']:.1f} ms; "
          f"parts (ms): {breakdown}")
    print(f"{over_name}: {res['over_capacity']['images_per_s']:.2f} images/s "
          f"({res['over_capacity']['evictions']} evictions) vs one domain "
          f"{res['over_capacity']['one_domain_images_per_s']:.2f}")
    redis.stop()
    if res["over_capacity"]["evictions"] <= 0:  # the stream would not measure what it is named for
        raise RuntimeError(f"the over-capacity stream evicted nothing ({args.resident_domains} of "
                           f"{len(ids)} domains on the device)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
