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


def warm_swap_bound_ms(pass_ms: float) -> float:
    """The most a switch between two resident domains may add to a 2-image pass: 1 ms, or 5% of
    the pass when that is more. A warm switch is a dict lookup (microseconds), so the paired
    median difference is noise, within a ms on this CPU; anything that touches the weights
    (a rebuild costs ~20 ms at width 1, a copy of them several ms) shows far above it."""
    return max(1.0, 0.05 * pass_ms)


def _search_row(r: dict, width: float, batch: int) -> dict:
    return next((x for x in r.get("search_table", []) if x["width"] == width and x["batch"] == batch), {})


def _lowest(r: dict, key: str) -> float | None:
    vals = [x[key] for x in r.get("search_table", []) if x.get(key) is not None]
    return min(vals) if vals else None


def _peak_shares(r: dict) -> str | None:
    rows = [x for x in r.get("search_table", []) if x.get("peak_share") is not None]
    return ", ".join(f"w{x['width']:g}/b{x['batch']} {x['peak_share']:.2f}" for x in rows) or None


def _fairness(r: dict) -> float | None:
    f = r.get("fairness")
    return max(f.values()) if isinstance(f, dict) and f else f


def _touched(r: dict) -> float | None:
    d = r.get("domains_registered")
    if not d or "distinct_domains_hit" not in d:
        return None
    return d["distinct_domains_hit"] / d["domains"]


REPORTED = "reported (no target)"

TARGETS = [  # (label, getter, target text, test of (value, whole result)); None: reported only
    ("masked / dense throughput", lambda r: r.get("masked_vs_dense"), ">= 0.95", lambda v, r: v >= 0.95),
    ("8 domains / one, uniform", lambda r: r.get("mixed_vs_single", {}).get("uniform"), ">= 0.90",
     lambda v, r: v >= 0.9),
    ("8 domains / one, Zipf", lambda r: r.get("mixed_vs_single", {}).get("zipf"), ">= 0.90",
     lambda v, r: v >= 0.9),
    ("cold swap end to end: what a never-seen domain's first image adds, width 1 (ms)",
     lambda r: r.get("swap_cold_e2e_ms"), "<= 150", lambda v, r: v <= 150),
    ("cold swap, build only: base x mask on the device (ms)", lambda r: r.get("swap_cold_build_ms"),
     "<= 50", lambda v, r: v <= 50),
    ("warm swap, added to a 2-image pass (ms)", lambda r: r.get("swap_warm_ms"),
     "<= 1 or 5% of the pass", lambda v, r: v <= warm_swap_bound_ms(r.get("swap_warm_pass_ms") or 0.0)),
    ("more domains than the device holds: images/s", lambda r: r.get("over_capacity", {}).get("images_per_s"),
     REPORTED, None),
    ("evictions in that stream", lambda r: r.get("over_capacity", {}).get("evictions"), "> 0",
     lambda v, r: v > 0),
    ("bits per weight, width 1", lambda r: r.get("bits_per_weight", {}).get("width_1"), "<= 0.50",
     lambda v, r: v <= 0.5),
    ("bits per weight, width 0.25", lambda r: r.get("bits_per_weight", {}).get("width_0.25"), "<= 0.55",
     lambda v, r: v <= 0.55),
    ("decode a width-1 mask (ms)", lambda r: r.get("mask_decode_ms"), "<= 100", lambda v, r: v <= 100),
    ("search speed-up vs the released loop, width 1, batch 16 (median of trials)",
     lambda r: _search_row(r, 1.0, 16).get("speedup"), ">= 1.3 (CPU)", lambda v, r: v >= 1.3),
    ("search speed-up vs the released loop, width 1, batch 64 (the paper's; median of trials)",
     lambda r: _search_row(r, 1.0, 64).get("speedup"), ">= 1.3 (CPU)", lambda v, r: v >= 1.3),
    ("search conv_share (convolutions alone / the iteration), lowest", lambda r: _lowest(r, "conv_share"),
     ">= 0.7", lambda v, r: v >= 0.7),
    ("search measured peak, GFLOP/s (best of a large GEMM and convs at their best shape)",
     lambda r: r.get("peak", {}).get("peak_gflops"), REPORTED, None),
    ("search peak_share (achieved GFLOP/s / measured peak)", _peak_shares, REPORTED, None),
    ("fairness (light p99 flooded / alone)", _fairness, "<= 3", lambda v, r: v <= 3),
    ("HTTP errors under load", lambda r: r.get("http_errors"), "0", lambda v, r: v == 0),
    ("HTTP images/s at 64 and 256 connections / at 16 (wrk), lowest over widths",
     lambda r: min(r["http_flat"].values()) if r.get("http_flat") else None, ">= 0.90",
     lambda v, r: v >= 0.9),
    ("HTTP p99 at 16, 64 and 256 connections, width 0.25 (ms)",
     lambda r: r.get("http_p99_max_ms", {}).get("width_0.25"), "<= 2000", lambda v, r: v <= 2000),
    ("HTTP p99 / p50 at 16 connections, width 0.25",
     lambda r: r.get("http_tail_16", {}).get("width_0.25"), "<= 4", lambda v, r: v <= 4),
    ("many domains: distinct mask bits / registered", lambda r: (
        r["domains_registered"]["distinct_mask_bits"] / r["domains_registered"]["domains"]
        if "distinct_mask_bits" in r.get("domains_registered", {}) else None), "1", lambda v, r: v == 1),
    ("many domains: share of the registered domains the stream touched", _touched, ">= 0.5",
     lambda v, r: v >= 0.5),
]


def _parts(parts: dict | None) -> str:
    if not parts:
        return "-"
    return ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in parts.items())


def gpu_text(env: dict) -> str:
    """The GPU section: what `--device cuda` covers, and whether this run was it."""
    covers = ("`python -m bench --device cuda` runs serving (the engine on the GPU: masks shipped at "
              "~1 bit per weight and unpacked there, each step's requests grouped by mask), search "
              "(ours with bf16 autocast and channels_last, and at fp32 for the speed-up against the "
              "plain port at equal precision) and the domains run on the GPU; fairness and the HTTP "
              "load stay on the CPU. The engine serves fp32 only: there is no bf16 serving path to "
              "measure.")
    if env.get("gpu"):
        return f"Run on {env['gpu']}: the tables above are the GPU's. {covers}"
    why = ("this run was on the CPU" if env.get("gpu_available")
           else "no GPU was lent to this session")
    return (f"**Unrun.** `python -m bench --device cuda` has not been run ({why}): no figure here is "
            f"a GPU's. {covers}")


def summary_rows(r: dict) -> list[list]:
    """[label, value, target, met] per figure; met is "-" where the run has no value or the
    figure has no target."""
    rows = []
    for label, get, target, ok in TARGETS:
        v = get(r)
        met = "-" if v is None or ok is None else ("yes" if ok(v, r) else "**no**")
        rows.append([label, v, target, met])
    return rows


def _provenance(env: dict) -> str:
    if not env.get("dirty"):
        return f"at commit `{env['commit']}`"
    return (f"at commit `{env['commit']}` **with uncommitted changes** (not a clean commit; "
            f"diff sha256 `{(env.get('diff_sha256') or '?')[:16]}`, in "
            f"{', '.join(env.get('changed', [])[:5]) or '?'})")


def render(r: dict) -> str:
    env = r["environment"]
    lines = ["# Benchmarks", "",
             f"Written by `python -m bench{' --quick' if r.get('quick') else ''}` on {env['date']} "
             f"{_provenance(env)}: {env['device']}, {env['cpu']}, torch {env['torch']}, "
             f"{env['torch_threads']} torch threads. The JSON beside it: "
             f"`docs/results/bench{'-quick' if r.get('quick') else ''}.json`. Absolute figures hold for "
             "this machine only; ratios are taken within one run. "
             + ("No GPU was lent to this run: every figure is the CPU's." if not env.get("gpu") else ""),
             "", "## Summary", ""]
    lines += [_table(["figure", "value", "target", "met"], summary_rows(r)), ""]
    secs = r.get("seconds", {})
    lines += [f"Section times (s): {', '.join(f'{k} {v:g}' for k, v in secs.items())}.", ""]
    commits = r.get("section_commits", {})
    if any(c != env.get("commit") for c in commits.values()):  # `--only` re-ran some sections
        lines += ["Each section was measured at its own commit (a later `--only` run re-measured "
                  "some and kept the rest): "
                  + ", ".join(f"{k} `{c}`" for k, c in commits.items()) + ".", ""]

    if "serving_detail" in r:
        s = r["serving_detail"]
        lines += ["## Serving, through the engine (no HTTP)", "",
                  f"Base width {s['width']:g} ({s['parameters']:,} parameters), {s['torch_threads']} torch "
                  "threads, 16 clients x 4 images, max batch 32; 8 random k=0.1 masks with real BN "
                  "statistics, one k=1 mask for the dense network; streams interleaved.", "",
                  _table(["stream", "images/s (median)", "best"],
                         [[k, v, s["images_per_s_best"][k]] for k, v in s["images_per_s"].items()]
                         + [["the plain module, no engine", s["plain_module_images_per_s"], None]]), "",
                  f"- Cold swap end to end (`swap_cold_e2e_ms`, what a never-seen domain's first image "
                  f"costs over the same image of a resident domain: resolve the domain, fetch the file "
                  f"from the shared store, decode and verify it, keep it on disk, build base x mask, and "
                  f"whatever a first pass on new weights adds; each cold request followed by the same "
                  f"request warm, the median of the paired differences): {_f(s.get('cold_added_ms'), 1)} "
                  f"ms median, {_f(s.get('cold_added_best_ms'), 1)} best. The first image itself "
                  f"(`cold_first_image_ms`, the swap and one width-{s['width']:g} pass on one thread): "
                  f"{_f(s.get('cold_first_image_ms'), 1)} ms median, against {_f(s.get('warm_image_ms'), 1)} "
                  f"ms warm. Where it goes (ms, medians on other never-seen masks): "
                  f"{_parts(s.get('cold_first_image_parts_ms'))}. What it took (249 ms before, the first "
                  "pass included; timed inside the engine at width 1): the build wrote a fresh 47 MB "
                  "of weights, a page fault per 4 KiB on the request's path (33-100 ms on one core, "
                  "growing with the heap); an idle lane now keeps one domain's buffers ready "
                  "(allocated and touched) and the build writes into them (about 13 ms). Made beside a "
                  "pass, those buffers slowed the pass (a cold domain's first: 95 -> 140 ms), so they "
                  "are made only when no pass is under way. The decode (constriction's range coder, "
                  "about 28 ns a byte, holding the GIL) is what remains.",
                  f"- Cold swap, build only (`swap_cold_build_ms`, base x mask built on the device from "
                  f"a mask already in RAM): {s['cold_switch_ms']:.1f} ms median, "
                  f"{s['cold_switch_best_ms']:.1f} best; at a full cache, into evicted buffers, "
                  f"{s['cold_switch_full_cache_ms']:.1f} ms.",
                  f"- Warm swap: {s['warm_switch_added_ms']:+.2f} ms added to a {s['request_2_images_ms']:.1f} ms "
                  f"2-image pass (bound {warm_swap_bound_ms(s['request_2_images_ms']):.2f} ms: 1 ms or 5% of "
                  f"the pass; lookup {s['warm_switch_lookup_us']:.1f} us).",
                  f"- Per domain: {s['ram_bytes_per_domain_packed'] / 1e6:.2f} MB of packed bits in RAM "
                  f"when held, {s['device_bytes_per_resident_domain'] / 1e6:.1f} MB of masked weights "
                  "when resident on the device.", ""]
        o = s.get("over_capacity")
        if o:
            lines += [f"- More domains than the device holds: {o['stream']} (device cache bound to "
                      f"{o['resident_domains']} domains' weights): {_f(o['images_per_s'])} images/s with "
                      f"{o['evictions']} evictions in the stream, against {_f(o['one_domain_images_per_s'])} "
                      "for one domain on the same engine.", ""]
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
        pk = r.get("peak", {})
        lines += ["## Search iteration", "",
                  f"`{r['search_features']}` features, AMA, k=0.1, local pruning; {r.get('search_trials', 1)} "
                  f"trials interleaved (plain, ours, plain, ours, ...), each the median of "
                  f"{r['search_steps']} steps after warm-up; the speed-up is the median of the trials' "
                  "ratios, with their min and max. Plain port: the released loop (a full sort of every "
                  "layer's scores each step, fp32, cached real statistics).", "",
                  "`conv_share`: the iteration's convolution FLOPs (counted from shapes) run alone, over "
                  "the iteration's time: how much of an iteration runs at the speed the device reaches "
                  "on these convolutions (not a hardware roofline). `peak_share`: the iteration's achieved "
                  f"GFLOP/s over a measured peak of {_f(pk.get('peak_gflops'))} GFLOP/s ({pk.get('dtype', '?')}: "
                  f"the best of torch.mm at square sizes, {_f(pk.get('gemm_gflops'))} "
                  f"({', '.join(f'n={k} {v}' for k, v in pk.get('gemm_gflops_by_size', {}).items())}), "
                  f"and of the iteration's convolutions each at its shape, {_f(pk.get('best_conv_gflops'))}).",
                  "",
                  _table(["width", "batch", "plain port s/it", "ours s/it", "speed-up (min / median / max)",
                          "conv GFLOP/it", "achieved GFLOP/s", "convs alone GFLOP/s", "conv_share",
                          "peak_share"],
                         [[x["width"], x["batch"], x["plain_port_s"], x["ours_s"],
                           f"{_f(x.get('speedup_min'))} / {_f(x['speedup'])} / {_f(x.get('speedup_max'))}",
                           x["conv_gflop"], x["achieved_gflops"], x.get("convs_alone_gflops"),
                           x.get("conv_share"), x.get("peak_share")]
                          for x in r["search_table"]]), ""]
    if "fairness_http" in r:
        rows = [[w, case, c["light_p50_ms_alone"], c["light_p99_ms_alone"], c["light_p50_ms_flooded"],
                 c["light_p99_ms_flooded"], c["ratio"]]
                for w, fw in r["fairness_http"].items() for case, c in fw.items() if isinstance(c, dict)]
        any_w = next(iter(r["fairness_http"].values()))
        lines += ["## Fairness under a flood (HTTP)", "",
                  f"A light domain's one-image requests, {any_w['light_requests']} in a row, alone and "
                  f"while {any_w['flood_clients']} closed-loop clients send "
                  f"{any_w['flood_request_images']}-image requests to one other domain, then spread "
                  "over 8 (a refused flood request waits its Retry-After). Through the API as its own "
                  f"process. `fairness`: {r['fairness']}.", "",
                  "What it took (the eight-domain flood was 4.83 at width 0.25 and 7.32 at width 1): "
                  "a light request waited for a lane to finish a flood's pass (both lanes busy), and "
                  "a flood's domain that emptied for a moment and came back took the turn's bypass "
                  "from it. Now only a sparse domain (all it waits for fits one pass, none of it under "
                  "way) goes ahead of the turn, and an express lane (`SLT_EXPRESS_LANE`, one thread "
                  "beside the lanes) runs only such requests, so a light image starts at once, the OS "
                  "sharing the cores with the flood's passes. A closed-loop light client so takes up "
                  "to one lane's share of the cores (of lanes + 1), never more.", "",
                  _table(["width", "flood", "alone p50 ms", "alone p99 ms", "flooded p50 ms",
                          "flooded p99 ms", "p99 ratio"], rows), ""]
    if "http_widths" in r:
        lines += ["## HTTP under load (loopback)", "",
                  f"The API as its own process, `GET /generate?n={r['http_n']}` over 8 resident domains. "
                  f"Closed loop: `wrk -t2`, {r['http_duration_s']} s a level after "
                  f"{r.get('http_warmup_s', 0)} s unmeasured, "
                  f"the levels interleaved in {r.get('http_rounds', 1)} rounds (the order reversed every "
                  "other round), each figure the median of its rounds (images/s of each round in the "
                  "last column): one 20 s level's images/s moved by about 10% from run to run on "
                  "this machine, as much as the margin of the 0.9x target. Open loop "
                  "(`bench/open_loop.py`, HTTP/1.1 over asyncio streams: httpx could not send faster than "
                  "about 100 requests/s on these 2 cores, so its table measured the client): a constant arrival rate, a multiple of the closed "
                  "loop's images/s at 16 connections, over at most that many connections, "
                  f"{r['http_open_duration_s']} s a level; latency from each request's arrival. 429s "
                  "(counted by wrk's script, by status) are counted apart from errors (any other status, "
                  "socket errors); "
                  "images/s counts 200s only. The load generator shares the machine's cores.", ""]
        lines += ["Where the cores went, and what changed (py-spy and `top -H` on the API, width 0.25, "
                  "8 domains, wrk on the same 2 cores):", "",
                  "- **GIL convoy.** Eager PyTorch takes the GIL back between every op, so two "
                  "single-thread lanes beside a busy event loop reached 66 images/s where the forward "
                  "alone does 95 per core. Each lane now runs a TorchScript trace of the base (eager's "
                  "kernels, its optimiser off: the same pixels, tested), which runs the whole pass "
                  "off the GIL: 89 images/s at 16 connections.",
                  "- **A starved domain.** Steps were cut into passes run smallest group first, "
                  "yielding after each pass to any newly waiting domain; with 8 domains one always "
                  "was, so the domain with the longest backlog ran last every step and waited 5 s "
                  "(p99 5.8 s at 64 connections, no 429). On a CPU a step is now one mask's pass, "
                  "the masks in turn: p99 0.55 s at 64.",
                  "- **Thread hops.** Plain `def` dependencies ran in FastAPI's thread pool, about an "
                  "eighth of the event loop's time; they are `async def` now.",
                  "- **The 429 storm.** At 256 connections a closed loop retries each refusal at once: "
                  "the event loop ran at 100% of a core answering them and each lane got 57%. A "
                  "refusal is still answered at once, in the ASGI layer before routing "
                  "(service/admission.py), but its connection is not read again for half of "
                  "`SLT_MAX_WAIT_MS` (at most the Retry-After), as a client honouring Retry-After "
                  "would wait at least. wrk's latency for the request sent after a 429 includes that "
                  "pause.",
                  "- **The tail at 256 connections.** The request sent after a 429 waited its pause "
                  "and then up to a bound: pausing until the estimate said it could start gave p99 "
                  "1.8-2.2 s at 256 (8 s rounds), and half of the requests then spent longer in the "
                  "engine than the bound (the estimate missed the round robin serving other domains' "
                  "newer arrivals first: finished requests took 1.2x their estimate). The estimate is "
                  "now calibrated by finished requests' time over their estimate (a moving average), "
                  "and the pause is half the bound: three 8 s rounds gave p99 1.37-1.54 s at 256, "
                  "and 263.6 against 226.8 images/s at 16.",
                  "- **False 429s.** The wall-clock rate counted an idle gap before a lone request as "
                  "busy time; it now counts only gaps with images waiting.",
                  "- **The express lane at 256 connections.** Width 0.25 at 256 connections kept "
                  "0.72-0.89x of 16's images/s; with `SLT_EXPRESS_LANE=0` the same load kept 0.96x "
                  "(two 5 s rounds each: 237.7 against 189.2 images/s). Under admission a flooded "
                  "domain's queue is short: when its pass landed, what had come meanwhile fitted one "
                  "pass and counted as light, so the express lane ran its 1-image passes (padded to "
                  "2) as a third thread on the lanes' cores. The express lane now takes a domain's "
                  "requests only when the first of them opened its busy period (the domain had nothing "
                  "waiting or under way when it came): a light client's, never a backlogged flood's. "
                  "Three 8 s rounds after the change: 235.1, 263.1 and 217.7 images/s at 16, 64 and "
                  "256 connections (0.93x), p99 1.62 s at 256.",
                  "- **Work for clients that had left.** wrk ends each level by closing its "
                  "connections; at 256 their requests held up to `SLT_MAX_WAIT_MS` of queued work, "
                  "which the server still made at the start of the next level: with 5 s levels "
                  "(`--quick`) 256 connections kept 0.84x of 16. A generation whose client "
                  "disconnects is now cancelled and leaves the queue at once (service/departed.py): "
                  "1.09x in the same quick run after the change.", "",
                  "wrk's percentiles are over every response, 429s included; the open loop's are over "
                  "the 200s, from each request's scheduled arrival.", ""]
        for w, res in r["http_widths"].items():
            lines += [f"### {w.replace('_', ' ')} ({res.get('lanes')} inference lanes, "
                      f"SLT_MAX_WAIT_MS {res.get('max_wait_ms')})", "",
                      _table(["wrk connections", "requests", "p50 ms", "p99 ms", "images/s", "429s", "errors",
                              "images/s by round"],
                             [[c, x["requests"], x["p50_ms"], x["p99_ms"], x["images_per_s"],
                               x["refused_429"], x["errors"],
                               " / ".join(f"{v['images_per_s']:.1f}" for v in x.get("rounds", []))]
                              for c, x in res["closed"].items()]), "",
                      _table(["open loop: rate/s (x capacity)", "connections", "sent", "images/s",
                              "p50 ms", "p90 ms", "p99 ms", "429s", "errors"],
                             [[f"{x['rate_per_s']:.1f} ({x['rate_x_capacity']:g}x)", x["connections"], x["sent"],
                               x["images_per_s"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["refused_429"],
                               x["errors"]] for x in res["open"]]), ""]
            if res.get("beside_search"):
                c = next(iter(res["beside_search"].values()))["connections"]
                alone = res["closed"][str(c)]
                rows = [["no search", alone, 1.0]] + [
                    [nice, x, x["images_per_s"] / alone["images_per_s"]]
                    for nice, x in res["beside_search"].items()]
                lines += ["Beside a mask search on the same host (`python -m trainer search --preset "
                          "demo`, its own process and torch threads, at the niceness a worker takes "
                          f"from `SLT_SEARCH_NICE`), wrk at {c} connections:", "",
                          _table(["search niceness", "images/s (x alone)", "p50 ms", "p99 ms",
                                  "p99 / p50", "429s", "errors"],
                                 [[nice, f"{x['images_per_s']} ({ratio:.2f}x)", x["p50_ms"], x["p99_ms"],
                                   round(x["p99_ms"] / x["p50_ms"], 1), x["refused_429"], x["errors"]]
                                  for nice, x, ratio in rows]), ""]
    if "domains_registered" in r:
        d = r["domains_registered"]
        lines += ["## Many domains on one replica", "",
                  _table(["figure", "value"], [
                      ["registered domains (each its own mask)", d["domains"]],
                      ["distinct mask bits among them", d.get("distinct_mask_bits")],
                      ["mask file bytes", d["mask_file_bytes"]],
                      ["Redis bytes per 1,000 domains (records, index, blobs)", d["redis_bytes_per_1000_domains"]],
                      ["replica start-up to ready (s)", d["startup_s"]],
                      ["replica RSS idle (MB)", round(d["rss_idle_bytes"] / 1e6, 1)],
                      ["distinct domains the stream touched", d.get("distinct_domains_hit")],
                      [f"GET /generate p50 / p99 (ms), a sweep over half of the domains and Zipf over "
                       f"{d['zipf_over']}, {d['requests']} requests, {d['clients']} clients",
                       f"{d['generate_p50_ms']} / {d['generate_p99_ms']}"],
                      ["cold swaps in the stream", d["cold_swaps"]],
                      ["errors", d["errors"]],
                      ["masks in RAM after, bytes", f"{d['masks_in_ram']}, {d['masks_ram_bytes']}"],
                      ["replica RSS after (MB)", round(d["rss_after_bytes"] / 1e6, 1)]]), ""]
    lines += ["## GPU", "", gpu_text(env), ""]
    return "\n".join(lines)
