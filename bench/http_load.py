"""HTTP load on a real replica, the API as its own process on loopback, GET /generate over 8
resident domains: `wrk` (Debian's package, a closed loop) at 16, 64 and 256 connections, then
an open loop (bench.open_loop: constant arrival rate, latency from the arrival) below and above
the capacity wrk found. Reports p50/p99, images/s (200s only), 429s (the server's own counter)
and errors (5xx and socket errors) apart. At the first width, wrk at 16 connections again beside a
mask search on the same host (`python -m trainer search`, a process of its own, as a worker runs
one) at each of `search_nice` niceness levels: what a search does to serving, and what keeps
serving first (SLT_SEARCH_NICE)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import open_loop
from bench.replica import replica
from bench.serving import make_masks
from service.settings import Settings
from store.blobs import RedisBlobs
from store.catalog import SharedCatalog
from store.connection import EmbeddedRedis, connect
from store.domains import DomainRegistry
from trainer.masks import MaskCatalog

_SCRIPT = """
local domains, n, max = {%s}, %d, %d
local i, finished = 0, 0
local threads = {}
statuses = {}  -- global: done() reads each thread's through thread:get
setup = function(thread) table.insert(threads, thread) end
request = function()
  i = i + 1
  local d = domains[(i %% #domains) + 1]
  return wrk.format("GET", "/generate?n=" .. n .. "&seed=" .. i .. "&domain=" .. d)
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  finished = finished + 1
  if finished >= max then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %%d %%d\\n", k, v)) end
end
"""
log = logging.getLogger(__name__)
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict:
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M)}
    if not {"50", "99"} <= set(pct):
        raise RuntimeError(f"wrk printed no latency distribution:\n{out[-2000:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    seconds = _ms(re.search(r"requests in ([\d.]+(?:us|ms|s|m)),", out).group(1)) / 1e3
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    statuses = {int(k): int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    return {"p50_ms": pct["50"], "p99_ms": pct["99"], "requests_per_s": rps, "requests": total,
            "seconds": seconds, "non_2xx": non2xx, "socket_errors": sock, "statuses": statuses}


def _rejected(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    m = re.search(r"^slt_generate_rejected_total (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


WARMUP_S = 3  # wrk at a level's connections before it is measured


def _wrk(url: str, script: Path, c: int, seconds: int, *flags: str) -> str:
    """wrk's output for `seconds` of `c` connections driven by `script`."""
    return subprocess.run(["wrk", "-t2", f"-c{c}", f"-d{seconds}s", *flags, "--timeout", "30s",
                           "-s", str(script), url], capture_output=True, text=True,
                          timeout=seconds + 120).stdout


def _level(url: str, script: Path, c: int, duration_s: int, n: int, warmup_s: int = WARMUP_S) -> dict:
    """One wrk level, after WARMUP_S of the same load unmeasured (the previous level's
    abandoned requests still run, and a new level's connections all arrive at once: that
    transient is not the steady state a level measures). The statuses as the script counted
    them, so 429s are told apart from errors (any other non-200, and socket errors); the
    server's own 429 counter beside them (it also counts refusals of requests wrk stopped
    waiting for at the end)."""
    if warmup_s:
        _wrk(url, script, c, warmup_s)
    before = _rejected(url)
    res = parse_wrk(_wrk(url, script, c, duration_s, "--latency"))
    statuses = res.pop("statuses")
    if sum(statuses.values()) < res["requests"] - res["socket_errors"]:
        raise RuntimeError(f"the wrk script counted {statuses} of {res['requests']} requests")
    ok = statuses.get(200, 0)
    return {**res, "refused_429": statuses.get(429, 0),
            "refused_429_server": int(_rejected(url) - before),
            "errors": sum(v for k, v in statuses.items() if k not in (200, 429)) + res["socket_errors"],
            "images_per_s": round(ok * n / res["seconds"], 2)}


def run(widths: tuple[float, ...] = (0.25, 1.0), clients: tuple[int, ...] = (16, 64, 256),
        duration_s: int = 20, n: int = 1, open_rates: tuple[float, ...] = (0.8, 1.5),
        open_duration_s: int = 10, cache: Path | None = None,
        search_nice: tuple[int, ...] = (10, 0), dataset: Path | None = None, closed_rounds: int = 3) -> dict:
    """wrk (closed loop) at each connection count, then the open loop (bench.open_loop) at
    `open_rates` x the closed loop's images/s at 16 connections, at each connection count, for
    every width; each width on a fresh replica with 8 resident domains."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    out: dict = {"http_n": n, "http_duration_s": duration_s, "http_open_duration_s": open_duration_s,
                 "http_rounds": closed_rounds, "http_warmup_s": WARMUP_S, "http_widths": {}}
    for i, width in enumerate(widths):
        out["http_widths"][f"width_{width:g}"] = _width(width, clients, duration_s, n, open_rates,
                                                       open_duration_s, cache,
                                                       search_nice if i == 0 else (), dataset,
                                                       closed_rounds)
    ws = out["http_widths"]
    out["http_errors"] = sum(lv["errors"] for w in ws.values()
                             for lv in [*w["closed"].values(), *w["open"]])
    base = clients[0]  # the level the others are measured against (16 in every run of ours)
    others = [c for c in clients if c != base]
    out["http_flat"] = {k: round(min(w["closed"][str(c)]["images_per_s"] for c in others)
                                 / w["closed"][str(base)]["images_per_s"], 3)
                        for k, w in ws.items()} if others else {}
    out["http_p99_max_ms"] = {k: max(w["closed"][str(c)]["p99_ms"] for c in clients) for k, w in ws.items()}
    out["http_tail_16"] = {k: round(w["closed"][str(base)]["p99_ms"] / w["closed"][str(base)]["p50_ms"], 2)
                           for k, w in ws.items()}
    return out


def median_level(rounds: list[dict]) -> dict:
    """One level over its rounds: images/s, requests/s and the percentiles as the median of the
    rounds' (each round's own beside it), counts summed; the highest p99 of any round kept."""
    med = {k: statistics.median(lv[k] for lv in rounds)
           for k in ("p50_ms", "p99_ms", "requests_per_s", "images_per_s")}
    summed = {k: sum(lv[k] for lv in rounds)
              for k in ("requests", "seconds", "non_2xx", "socket_errors", "refused_429",
                        "refused_429_server", "errors")}
    return {**med, **summed, "p99_max_ms": max(lv["p99_ms"] for lv in rounds),
            "rounds": [{k: lv[k] for k in ("images_per_s", "p50_ms", "p99_ms", "refused_429")} for lv in rounds]}


def _width(width: float, clients: tuple[int, ...], duration_s: int, n: int, open_rates: tuple[float, ...],
           open_duration_s: int, cache: Path | None, search_nice: tuple[int, ...] = (),
           dataset: Path | None = None, closed_rounds: int = 3) -> dict:
    masks, _ = make_masks(f"width={width}", 8, cache or Path(tempfile.gettempdir()) / "slt-bench-masks")
    tmp = Path(tempfile.mkdtemp(prefix="slt-bench-http-"))
    res: dict = {"closed": {}, "open": []}
    with EmbeddedRedis(tmp / "redis") as server:
        client = connect(server.url)
        catalog = SharedCatalog(client, RedisBlobs(client), MaskCatalog(tmp / "writer"))
        names = []
        for i, data in enumerate(masks):
            mask_id, _ = catalog.publish(data)
            DomainRegistry(client).promote(f"load{i}", mask_id)
            names.append(f"load{i}")
        with replica(tmp / "home", server.url, width) as (_, url, _):
            for d in names:  # every domain resident: the load measures serving, not first swaps
                httpx.get(url + "/generate", params={"domain": d, "seed": 0}, timeout=60).raise_for_status()
            ready = httpx.get(url + "/readyz", timeout=30).json()
            res.update(lanes=ready.get("torch_threads"), max_wait_ms=Settings().max_wait_ms)
            script = tmp / "load.lua"
            script.write_text(_SCRIPT % (",".join(f'"{d}"' for d in names), n, 10_000_000))
            # levels interleaved in rounds, the order reversed every other round, each level the
            # median of its rounds: on a shared 2-core machine one level's images/s moves by 10%
            # from run to run, as much as the margin the flat-throughput target leaves
            rounds: dict[str, list[dict]] = {str(c): [] for c in clients}
            for r in range(closed_rounds):
                for c in (clients if r % 2 == 0 else tuple(reversed(clients))):
                    rounds[str(c)].append(_level(url, script, c, duration_s, n))
                    log.info("http width %g: wrk %d connections, round %d: %s", width, c, r + 1,
                             rounds[str(c)][-1])
            for c in clients:
                res["closed"][str(c)] = median_level(rounds[str(c)])
            capacity = res["closed"][str(clients[0])]["images_per_s"] / n

            def path(i: int) -> str:
                return f"/generate?n={n}&seed={i}&domain={names[i % len(names)]}"

            for c in clients:
                for f in open_rates:
                    lv = open_loop.run(url, max(1.0, f * capacity), open_duration_s, c, path)
                    res["open"].append({**lv, "rate_x_capacity": f,
                                        "images_per_s": round(lv["ok_per_s"] * n, 2)})
                    log.info("http width %g: open loop %.1f/s over %d: %s", width, f * capacity, c, lv)
            if search_nice:
                res["beside_search"] = {}
            for nice in search_nice:
                with _search_process(width, nice, tmp, dataset):
                    lv = _level(url, script, clients[0], duration_s, n)
                res["beside_search"][str(nice)] = {**lv, "connections": clients[0]}
                log.info("http width %g: wrk %d connections beside a search at nice %d: %s",
                         width, clients[0], nice, lv)
    return res


class _search_process:
    """A mask search in a process of its own at CPU niceness `nice` (as a worker sets it from
    SLT_SEARCH_NICE), running its steps before the load starts and stopped after it."""

    def __init__(self, width: float, nice: int, tmp: Path, dataset: Path | None):
        self.dataset = dataset or Path(os.environ.get("SLT_HOME", "var")) / "datasets" / "emoji-google"
        if not self.dataset.exists():
            raise RuntimeError(f"no dataset at {self.dataset} (make data)")
        self.args = [sys.executable, "-m", "trainer", "search", "--dataset", str(self.dataset),
                     "--preset", "demo", "--width", f"{width:g}", "--iterations", "1000000",
                     "--device", "cpu", "--out", str(tmp / f"beside-{nice}.safetensors")]
        self.nice, self.log = nice, tmp / f"beside-{nice}.log"

    def __enter__(self) -> _search_process:
        self.fh = self.log.open("wb")
        self.proc = subprocess.Popen(self.args, stdout=self.fh, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.nice(self.nice))
        deadline = time.monotonic() + 300
        while b"it/s" not in self.log.read_bytes() and b"s/it" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:  # its steps never began
                self.__exit__()
                raise RuntimeError(f"the search beside serving did not start: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.fh.close()
