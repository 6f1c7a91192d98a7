"""The store tests' Redis: one real redis-server per test module, emptied before each test."""
from __future__ import annotations

import pytest

from store.connection import EmbeddedRedis, connect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture
def client(server):
    c = connect(server.url)
    c.flushall()
    return c
