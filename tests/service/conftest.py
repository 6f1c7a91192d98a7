"""The service tests' Redis: one real redis-server per test module."""
from __future__ import annotations

import pytest

from store.connection import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r:
        yield r.url
