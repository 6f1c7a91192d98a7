"""SLT_DEMO: on a first start, each demo domain is served at once from the mask shipped in
`worker/shipped/` (when it belongs to the served base), and one short search per demo dataset
is queued, so a new user sees images straight away and watches jobs progress. Remembered in
Redis, so later starts do neither again: the flag is read before anything is published, so a
shipped mask that was deleted, or a domain that was removed, is never brought back (a deleted
mask's tombstone also refuses it)."""
from __future__ import annotations

import logging
from pathlib import Path

from store.catalog import DeletedMask
from trainer.masks import ForeignMaskError, MaskError
from trainer.ticket import cached_base
from worker.queue import submit_search
from worker.runner import Context

log = logging.getLogger(__name__)

DEMO_DATASETS = ("emoji-google", "emoji-twitter")  # trainer.data.demo installs these (`make data`)
DEMO_PRESET = "demo"  # sized to finish in minutes on a CPU
SHIPPED = Path(__file__).with_name("shipped")  # <dataset>.safetensors, searched long (README there)


def seed_shipped_masks(ctx: Context, shipped: Path = SHIPPED) -> list[str]:
    """Promote each demo domain's shipped mask when the domain has none yet and the mask is
    for the served base; returns the domains seeded."""
    seeded = []
    for name in DEMO_DATASETS:
        path = shipped / f"{name}.safetensors"
        flag = f"slt:shipped:{name}"
        if not path.is_file() or ctx.domains.active(name) is not None:
            continue
        if ctx.client.exists(flag):
            continue  # seeded before (and since replaced or removed by someone): publish nothing
        data = path.read_bytes()
        try:  # the catalog verifies the file and its base (content-addressed: adding twice is a no-op)
            mask_id, _ = ctx.catalog.publish(data, base_sha=cached_base(ctx.settings.base_spec)[1])
        except ForeignMaskError as e:
            log.info("shipped mask %s is not for the served base (SLT_BASE); not used: %s", path.name, e)
            continue
        except MaskError as e:
            log.error("shipped mask %s is unreadable (%s); not used", path.name, e)
            continue
        except DeletedMask as e:
            log.info("shipped mask %s is not used: %s", path.name, e)
            continue
        if not ctx.client.set(flag, "1", nx=True):
            continue  # another worker seeded it just now
        try:
            ctx.domains.promote(name, mask_id, by="shipped", guard=ctx.catalog.promotion_guard(mask_id))
        except KeyError as e:  # deleted between publish and promotion
            log.info("demo domain %s not seeded: %s", name, e)
            continue
        log.info("demo: domain %s served from the shipped mask %s", name, mask_id[:12])
        seeded.append(name)
    return seeded


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
            # a domain already served (by its shipped, long-searched mask) keeps it; the demo
            # job's mask lands in the catalog beside it, one click away on the dashboard
            served = ctx.domains.active(name) is not None
            job = submit_search(ctx.app, ctx.store, ctx.settings, domain=name, dataset=name,
                                preset=DEMO_PRESET, overrides={}, promote=not served)
        except Exception:
            ctx.client.delete(flag)  # so the next start tries again
            raise
        ctx.client.set(flag, job["job_id"])
        log.info("demo: queued job %s (%s preset) for domain %s", job["job_id"], DEMO_PRESET, name)
        queued.append(job["job_id"])
    return queued
