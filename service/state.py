"""What the app holds for its lifetime: settings, Redis, catalog, domain registry, engine."""
from __future__ import annotations

import logging

from service.jobs import JobQueue
from service.settings import Settings
from store.connection import EmbeddedRedis, connect, local_redis
from store.domains import DomainRegistry, MaskBlobs
from trainer.masks import MaskCatalog

log = logging.getLogger(__name__)


class AppState:
    """Built at startup, torn down at shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self.engine = None

    async def start(self) -> None:
        s = self.settings
        url = s.redis_url
        if not url:  # a lone API process: the embedded redis of this home (started if none runs)
            url, self.embedded = local_redis(s.redis_dir)
        self.redis_url = url
        self.redis = connect(url)
        self.jobs = JobQueue(s, self.redis, url)
        self.catalog = MaskCatalog(s.masks_dir)
        self.catalog.clean_temp()
        self.domains = DomainRegistry(self.redis)
        self.blobs = MaskBlobs(self.redis)
        from service.engine import Engine

        self.engine = Engine(s, self)
        await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        self.redis.close()
        if self.embedded is not None:
            self.embedded.stop()
