"""docs/BENCHMARKS.md from one `python -m bench` run: the summary against the targets, then one
table per section. Everything in the file comes from the JSON beside it."""
from __future__ import annotations


def _f(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


TARGETS = [  # (label, getter, target text, test)
    ("masked / dense throughput", lambda r: r.get("masked_vs_dense"), ">= 0.95", lambda v: v >= 0.95),
    ("8 domains / one, uniform", lambda r: r.get("mixed_vs_single", {}).get("uniform"), ">= 0.90", lambda v: v >= 0.9),
    ("8 domains / one, Zipf", lambda r: r.get("mixed_vs_single", {}).get("zipf"), ">= 0.90", lambda v: v >= 0.9),
    ("cold swap (ms)", lambda r: r.get("swap_cold_ms"), "<= 50", lambda v: v <= 50),
    ("warm swap, added (ms)", lambda r: r.get("swap_warm_ms"), "~0", lambda v: True),
    ("bits per weight, width 1", lambda r: r.get("bits_per_weight", {}).get("width_1"), "<= 0.50", lambda v: v <= 0.5),
    ("bits per weight, width 0.25", lambda r: r.get("bits_per_weight", {}).get("width_0.25"), "<= 0.55", lambda v: v <= 0.55),
    ("decode a width-1 mask (ms)", lambda r: r.get("mask_decode_ms"), "<= 100", lambda v: v <= 100),
    ("search speed-up vs the released loop, width 1, batch 16", lambda r: r.get("search_speedup_vs_reference"),
     ">= 1.3 (CPU)", lambda v: v >= 1.3),
    ("search roofline share, lowest", lambda r: r.get("search_roofline"), ">= 0.7", lambda v: v >= 0.7),
    ("fairness (light p99 flooded / alone)", lambda r: r.get("fairness"), "<= 3", lambda v: v <= 3),
    ("HTTP errors under load", lambda r: r.get("http_errors"), "0", lambda v: v == 0),
]


def render(r: dict) -> str:
    env = r["environment"]
    lines = ["# Benchmarks", "",
             f"Written by `python -m bench{' --quick' if r.get('quick') else ''}` on {env['date']} at commit "
             f"`{env['commit']}`: {env['device']}, {env['cpu']}, torch {env['torch']}, "
             f"{env['torch_threads']} torch threads. The JSON beside it: "
             f"`docs/results/bench{'-quick' if r.get('quick') else ''}.json`. Absolute figures hold for "
             "this machine only; ratios are taken within one run. "
             + ("No GPU was lent to this run: every figure is the CPU's." if not env.get("gpu") else ""),
             "", "## Summary", ""]
    rows = []
    for label, get, target, ok in TARGETS:
        v = get(r)
        rows.append([label, v, target, "-" if v is None else ("yes" if ok(v) else "**no**")])
    lines += [_table(["figure", "value", "target", "met"], rows), ""]
    secs = r.get("seconds", {})
    lines += [f"Section times (s): {', '.join(f'{k} {v:g}' for k, v in secs.items())}.", ""]

    if "serving_detail" in r:
        s = r["serving_detail"]
        lines += ["## Serving, through the engine (no HTTP)", "",
                  f"Base width {s['width']:g} ({s['parameters']:,} parameters), {s['torch_threads']} torch "
                  "threads, 16 clients x 4 images, max batch 32; 8 random k=0.1 masks with real BN "
                  "statistics, one k=1 mask for the dense network; streams interleaved.", "",
                  _table(["stream", "images/s (median)", "best"],
                         [[k, v, s["images_per_s_best"][k]] for k, v in s["images_per_s"].items()]
                         + [["the plain module, no engine", s["plain_module_images_per_s"], None]]), "",
                  f"- Cold swap (base x mask built on the device): {s['cold_switch_ms']:.1f} ms median, "
                  f"{s['cold_switch_best_ms']:.1f} best; at a full cache, into evicted buffers, "
                  f"{s['cold_switch_full_cache_ms']:.1f} ms. Warm swap: {s['warm_switch_added_ms']:+.2f} ms "
                  f"added to a {s['request_2_images_ms']:.1f} ms 2-image pass (lookup "
                  f"{s['warm_switch_lookup_us']:.1f} us).",
                  f"- Per domain: {s['ram_bytes_per_domain_packed'] / 1e6:.2f} MB of packed bits in RAM "
                  f"when held, {s['device_bytes_per_resident_domain'] / 1e6:.1f} MB of masked weights "
                  "when resident on the device.", ""]
    if "bits_per_weight_table" in r:
        lines += ["## Mask files", "",
                  "Real k=0.1 masks (a 2-step search, random features), all-in bits per masked weight "
                  "(file bytes x 8 / weights).", "",
                  _table(["mask", "weights", "slt-mask/2 bytes", "bits/weight", "slt-mask/1 bytes", "bits/weight"],
                         [[k, v["weights"], v["v2_bytes"], v["v2"], v["v1_bytes"], v["v1"]]
                          for k, v in r["bits_per_weight_table"].items()]), "",
                  f"Decoding a width-1 slt-mask/2 file (parse, range-decode every layer, check counts "
                  f"and sha256): {_f(r.get('mask_decode_ms'), 1)} ms median.", ""]
    if "search_table" in r:
        lines += ["## Search iteration", "",
                  f"`{r['search_features']}` features, AMA, k=0.1, local pruning, median of {r['search_steps']} "
                  "steps after warm-up. Plain port: the released loop (a full sort of every layer's "
                  "scores each step, fp32, cached real statistics). Roofline share: the iteration's "
                  "convolution FLOPs (counted from shapes) per iteration time, over the same FLOPs "
                  "run alone.", "",
                  _table(["width", "batch", "plain port s/it", "ours s/it", "speed-up", "conv GFLOP/it",
                          "achieved GFLOP/s", "convs alone GFLOP/s", "roofline share"],
                         [[x["width"], x["batch"], x["plain_port_s"], x["ours_s"], x["speedup"], x["conv_gflop"],
                           x["achieved_gflops"], x["conv_roofline_gflops"], x["roofline_share"]]
                          for x in r["search_table"]]), ""]
    if "fairness_detail" in r:
        f = r["fairness_detail"]
        lines += ["## Fairness under a flood", "",
                  f"A light domain's one-image requests (p99 over {f['light_requests']}) alone: "
                  f"{f['light_p99_ms_alone']} ms; while {f['flood_clients']} clients flood another domain "
                  f"with {f['flood_request_images']}-image requests ({f['queue_images_during_flood']} images "
                  f"queued): {f['light_p99_ms_flooded']} ms; ratio {_f(r['fairness'])}. The batcher shares "
                  "each step between waiting domains by deficit round robin weighted by images; there "
                  "are no per-client limits (the queue bound answers 429 to everyone alike).", ""]
    if "http_p50_ms" in r:
        rows = [[c, r[f"clients_{c}"]["requests"], r[f"clients_{c}"]["p50_ms"], r[f"clients_{c}"]["p99_ms"],
                 r[f"clients_{c}"]["images_per_s"], r[f"clients_{c}"]["errors"]]
                for c in r["http_p50_ms"]]
        lines += ["## HTTP under load (wrk, loopback)", "",
                  f"`wrk` against the API as its own process, base width {r['http_width']:g}, "
                  f"`GET /generate?n={r['http_n']}` over 8 resident domains, {r['http_duration_s']} s per "
                  "level.", "",
                  _table(["connections", "requests", "p50 ms", "p99 ms", "images/s", "errors"], rows), ""]
    if "domains_registered" in r:
        d = r["domains_registered"]
        lines += ["## Many domains on one replica", "",
                  _table(["figure", "value"], [
                      ["registered domains (each its own mask)", d["domains"]],
                      ["mask file bytes", d["mask_file_bytes"]],
                      ["Redis bytes per 1,000 domains (records, index, blobs)", d["redis_bytes_per_1000_domains"]],
                      ["replica start-up to ready (s)", d["startup_s"]],
                      ["replica RSS idle (MB)", round(d["rss_idle_bytes"] / 1e6, 1)],
                      [f"GET /generate p50 / p99 (ms), Zipf over {d['zipf_over']} domains, "
                       f"{d['clients']} clients", f"{d['generate_p50_ms']} / {d['generate_p99_ms']}"],
                      ["cold swaps in the stream", d["cold_swaps"]],
                      ["errors", d["errors"]],
                      ["masks in RAM after, bytes", f"{d['masks_in_ram']}, {d['masks_ram_bytes']}"],
                      ["replica RSS after (MB)", round(d["rss_after_bytes"] / 1e6, 1)]]), ""]
    lines += ["## GPU", "",
              "Not measured: " + ("no GPU was lent to the sessions so far." if not env.get("gpu")
                                  else "see the tables above (run on the GPU)."), ""]
    return "\n".join(lines)
