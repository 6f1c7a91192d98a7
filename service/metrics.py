"""Prometheus metrics of one API process, in a registry of its own (so several apps in one
process, as in tests, never clash on the global default registry)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

disable_created_metrics()  # the `_created` series double every counter for no use here

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobsCollector(Collector):
    """`slt_jobs{status=...}` read at scrape time from the job store's counters (never a scan
    of the jobs); absent (not an error) when the job store cannot be read."""

    def __init__(self, count: Callable[[], dict[str, int] | None]):
        self.count = count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            counts = self.count()
        except Exception:  # a scrape must never fail because Redis or the job store is down
            log.warning("jobs by status: job store unreadable", exc_info=True)
            counts = None
        if counts is None:
            return
        g = GaugeMetricFamily("slt_jobs", "Search jobs by status", labels=["status"])
        for status in sorted(set(JOB_STATUSES) | set(counts)):
            g.add_metric([status], float(counts.get(status, 0)))
        yield g


class ServingMetrics:
    """Everything the engine and the routes record."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "slt_generate_request_seconds", "GET /generate latency, queueing included",
            ["domain"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60))
        self.images = Counter("slt_generated_images", "Images generated", ["domain"], registry=r)
        self.rejected = Counter("slt_generate_rejected", "Requests refused with 429 (the estimated wait over the bound, or the queue full)",
                                registry=r)
        self.batch_images = Histogram("slt_batch_images", "Images per inference step", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_domains = Histogram("slt_batch_domains", "Distinct masks per inference step",
                                       registry=r, buckets=(1, 2, 3, 4, 6, 8, 12, 16))
        self.step_seconds = Histogram("slt_step_seconds", "Inference step duration", registry=r,
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                               2.5, 5, 10))
        # from the queue to the last image written: the engine's share of a request's latency
        # (the rest of slt_generate_request_seconds is HTTP, admission and encoding)
        self.engine_seconds = Histogram(
            "slt_engine_seconds", "A request's time in the engine: queued until its images are made",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60))
        self.queue_images = Gauge("slt_queue_images", "Images waiting for the inference loop",
                                  registry=r)
        self.swap_seconds = Histogram(
            "slt_swap_seconds", "Building a mask's weights on the device (a cold domain switch)",
            registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.cache_hits = Counter("slt_cache_hits", "Device weight cache hits", registry=r)
        self.cache_misses = Counter("slt_cache_misses", "Device weight cache misses", registry=r)
        self.cache_evictions = Counter("slt_cache_evictions", "Device weight cache evictions",
                                       registry=r)
        self.cache_bytes = Gauge("slt_cache_resident_bytes", "Masked weights resident on the device",
                                 registry=r)
        self.cache_entries = Gauge("slt_cache_resident_masks", "Masks resident on the device",
                                   registry=r)
        self.masks_in_ram = Gauge("slt_masks_in_ram", "Packed masks held in RAM (an LRU)",
                                  registry=r)
        self.masks_ram_bytes = Gauge("slt_masks_ram_bytes",
                                     "Bytes of packed masks held in RAM (at most SLT_MASK_RAM_BYTES)",
                                     registry=r)

    def watch_jobs(self, count: Callable[[], dict[str, int] | None]) -> None:
        self.registry.register(JobsCollector(count))

    def render(self) -> bytes:
        return generate_latest(self.registry)
