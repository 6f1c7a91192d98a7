"""What the app holds for its lifetime: settings, Redis, the shared catalog and datasets, the
domain registry, the job queue and the engine."""
from __future__ import annotations

import asyncio
import logging

import redis

from service.engine import Engine
from service.jobs import JobQueue
from service.settings import Settings
from store.blobs import blob_store
from store.catalog import SharedCatalog
from store.connection import EmbeddedRedis, connect, local_redis
from store.datasets import SharedDatasets
from store.domains import DomainRegistry
from trainer.masks import MaskCatalog

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


class AppState:
    """Built at startup, torn down at shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self.engine: Engine | None = None

    async def start(self) -> None:
        s = self.settings
        url = s.redis_url
        if not url:  # a lone API process: the embedded redis of this home (started if none runs)
            url, self.embedded = local_redis(s.redis_dir)
        self.redis_url = url
        self.redis = connect(url, s.redis_socket_timeout_s)
        # /readyz's own client: an unreachable or hung Redis is told within seconds there
        self.probe = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S,
                                          socket_timeout=PROBE_TIMEOUT_S)
        self.jobs = JobQueue(s, self.redis, url)
        local = MaskCatalog(s.masks_dir)
        local.clean_temp()
        blobs = blob_store(s, self.redis)
        # the engine sets `protected` (masks its domains serve or pin) once it exists
        self.catalog = SharedCatalog(self.redis, blobs, local, local_budget_bytes=s.mask_disk_bytes)
        self.datasets = SharedDatasets(self.redis, blobs, s.shared_dataset_max_bytes)
        self.domains = DomainRegistry(self.redis)
        try:  # masks made here before the catalog was shared (the upgrade path), or lost with
            # the store's data; a deleted mask's file is removed instead (its tombstone)
            await asyncio.to_thread(self.catalog.sync_local)
            await asyncio.to_thread(self.catalog.bound_local)
            await asyncio.to_thread(self.jobs.store.ensure_indexes)  # jobs recorded before them
        except redis.RedisError as e:  # served from this host's files meanwhile; retried next start
            log.warning("local masks not synced to the shared catalog: %s", e)
        self.engine = Engine(s, self.catalog, self.domains, url, job_counts=self.jobs.store.counts)
        await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        self.redis.close()
        self.probe.close()
        if self.embedded is not None:
            self.embedded.stop()
