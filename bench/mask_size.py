"""Mask file size and decode time: bits per masked weight, all-in (file bytes x 8 / masked
weights), of real k=0.1 masks (a short search, local and global pruning) at width 1 and at
the demo width, in slt-mask/1 and slt-mask/2; and the time to decode a width-1 file."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from trainer.data import open_dataset
from trainer.generator import BaseSpec
from trainer.masks import FORMAT_V1, convert, decode_mask
from trainer.search import config_from, search


def _mask(width: float, pruning: str, dataset) -> bytes:
    cfg = config_from("demo", k=0.1, pruning=pruning, iterations=2, batch_size=2, warmup=0,
                      bn_batches=1, preview_every=0, features="random")
    return search(BaseSpec(width=width), cfg, dataset, domain="bench").data


def run(dataset: Path | None = None, widths: tuple[float, ...] = (1.0, 0.25), repeats: int = 7) -> dict:
    ds = open_dataset(dataset or Path(os.environ.get("SLT_HOME", "var")) / "datasets" / "emoji-google")
    bpw: dict[str, dict] = {}
    decode_ms = None
    for width in widths:
        for pruning in ("local", "global"):
            data = _mask(width, pruning, ds)
            n = decode_mask(data).n_weights()
            v1 = convert(data, FORMAT_V1)
            bpw[f"width {width:g}, {pruning}"] = {
                "weights": n, "v2_bytes": len(data), "v1_bytes": len(v1),
                "v2": 8 * len(data) / n, "v1": 8 * len(v1) / n}
            if width == 1.0 and pruning == "local":
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    decode_mask(data)
                    times.append(time.perf_counter() - t)
                decode_ms = 1e3 * statistics.median(times)
    worst = lambda w: max(v["v2"] for k, v in bpw.items() if k.startswith(f"width {w:g},"))  # noqa: E731
    return {"bits_per_weight": {"width_1": worst(1.0), "width_0.25": worst(0.25)} if 1.0 in widths
            else {f"width_{w:g}": worst(w) for w in widths},
            "bits_per_weight_table": bpw, "mask_decode_ms": decode_ms}
