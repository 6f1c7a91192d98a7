"""HTTP load on a real replica: `wrk` (Debian's package) drives GET /generate over loopback
against the API started as its own process, at 16 and 64 connections, requests spread over 8
domains, bounded in time (`--duration`) and in count (each wrk thread stops after its share).
Reports p50/p99 latency, images/s and errors (non-2xx answers and socket errors)."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from bench.replica import replica
from bench.serving import make_masks
from store.blobs import RedisBlobs
from store.catalog import SharedCatalog
from store.connection import EmbeddedRedis, connect
from store.domains import DomainRegistry
from trainer.masks import MaskCatalog

_SCRIPT = """
local domains, n, max = {%s}, %d, %d
local i, done = 0, 0
request = function()
  i = i + 1
  local d = domains[(i %% #domains) + 1]
  return wrk.format("GET", "/generate?n=" .. n .. "&seed=" .. i .. "&domain=" .. d)
end
response = function(status, headers, body)
  done = done + 1
  if done >= max then wrk.thread:stop() end
end
"""
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
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"p50_ms": pct["50"], "p99_ms": pct["99"], "requests_per_s": rps, "requests": total,
            "errors": non2xx + sock}


def run(width: float = 0.25, clients: tuple[int, ...] = (16, 64), duration_s: int = 15,
        max_requests: int = 20_000, n: int = 1, cache: Path | None = None) -> dict:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    masks, _ = make_masks(f"width={width}", 8, cache or Path(tempfile.gettempdir()) / "slt-bench-masks")
    tmp = Path(tempfile.mkdtemp(prefix="slt-bench-http-"))
    out: dict = {"http_width": width, "http_n": n, "http_duration_s": duration_s}
    with EmbeddedRedis(tmp / "redis") as server:
        client = connect(server.url)
        catalog = SharedCatalog(client, RedisBlobs(client), MaskCatalog(tmp / "writer"))
        names = []
        for i, data in enumerate(masks):
            mask_id, _ = catalog.publish(data)
            DomainRegistry(client).promote(f"load{i}", mask_id)
            names.append(f"load{i}")
        with replica(tmp / "home", server.url, width, SLT_QUEUE_LIMIT="4096") as (_, url, _):
            for d in names:  # every domain resident: the load measures serving, not first swaps
                httpx.get(url + "/generate", params={"domain": d, "seed": 0}, timeout=60).raise_for_status()
            script = tmp / "load.lua"
            for c in clients:
                threads = 2
                script.write_text(_SCRIPT % (",".join(f'"{d}"' for d in names), n, max_requests // threads))
                run_ = subprocess.run(["wrk", f"-t{threads}", f"-c{c}", f"-d{duration_s}s", "--latency",
                                       "--timeout", "30s", "-s", str(script), url],
                                      capture_output=True, text=True, timeout=duration_s + 120)
                res = parse_wrk(run_.stdout)
                out[f"clients_{c}"] = {**res, "images_per_s": res["requests_per_s"] * n}
    out.update(http_p50_ms={c: out[f"clients_{c}"]["p50_ms"] for c in clients},
               http_p99_ms={c: out[f"clients_{c}"]["p99_ms"] for c in clients},
               http_images_per_s={c: out[f"clients_{c}"]["images_per_s"] for c in clients},
               http_errors=sum(out[f"clients_{c}"]["errors"] for c in clients))
    return out
