"""SLT_DEMO: on a first start, one short search per demo dataset, so a new user watches jobs
progress and domains appear. Remembered in Redis, so later starts queue nothing."""
from __future__ import annotations

import logging

from worker.queue import submit_search
from worker.runner import Context

log = logging.getLogger(__name__)

DEMO_DATASETS = ("emoji-google", "emoji-twitter")  # trainer.data.demo installs these (`make data`)
DEMO_PRESET = "demo"  # sized to finish in minutes on a CPU


def queue_demo_jobs(ctx: Context) -> list[str]:
    """Queue the demo searches not queued before; returns the new job ids."""
    queued = []
    for name in DEMO_DATASETS:
        if not ctx.settings.dataset_path(name).exists():
            log.warning("demo dataset %s is not installed (`make data`); no demo search for it", name)
            continue
        flag = f"slt:demo:{name}"
        if not ctx.client.set(flag, "queued", nx=True):
            continue  # an earlier start (of this or another worker) queued it
        try:
            job = submit_search(ctx.app, ctx.store, ctx.settings, domain=name, dataset=name,
                                preset=DEMO_PRESET, overrides={}, promote=True)
        except Exception:
            ctx.client.delete(flag)  # so the next start tries again
            raise
        ctx.client.set(flag, job["job_id"])
        log.info("demo: queued job %s (%s preset) for domain %s", job["job_id"], DEMO_PRESET, name)
        queued.append(job["job_id"])
    return queued
