"""The store's faults are named, over real HTTP and a real redis-server: /readyz (and the log at
start) reports a Redis that can grow without bound or evict the store's keys; an out-of-memory
or read-only Redis is answered and logged as such, not as "unreachable"."""
from __future__ import annotations

import logging

import pytest
from live_server import LiveServer, make_mask, settings_for

from store.connection import EmbeddedRedis, connect


@pytest.fixture
def redis_server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as r:
        yield r


def _readyz(srv: LiveServer) -> dict:
    with srv.client() as c:
        r = c.get("/readyz")
    assert r.status_code == 200, r.text
    return r.json()


def test_readyz_and_the_start_log_report_a_redis_that_can_lose_data(tmp_path, redis_server, caplog):
    r = connect(redis_server.url)
    r.config_set("maxmemory", 0)  # the embedded default: unbounded
    r.config_set("maxmemory-policy", "noeviction")
    with caplog.at_level(logging.WARNING, logger="service.app"):
        with LiveServer(settings_for(tmp_path / "home", redis_server.url)) as srv:
            started = [rec.getMessage() for rec in caplog.records if rec.name == "service.app"]
            assert any("no maxmemory" in m for m in started), started

            ready = _readyz(srv)
            assert ready["status"] == "ready" and ready["redis_maxmemory"] == 0
            assert len(ready["warnings"]) == 1 and "no maxmemory" in ready["warnings"][0]
            assert "S3" in ready["warnings"][0]  # where large blobs belong

            r.config_set("maxmemory", 512 << 20)
            r.config_set("maxmemory-policy", "allkeys-lru")
            ready = _readyz(srv)
            assert ready["redis_maxmemory"] == 512 << 20 and ready["redis_maxmemory_policy"] == "allkeys-lru"
            assert len(ready["warnings"]) == 1 and "allkeys-lru" in ready["warnings"][0]
            assert "noeviction" in ready["warnings"][0]

            r.config_set("maxmemory-policy", "noeviction")
            ready = _readyz(srv)
            assert ready["warnings"] == [] and ready["redis_maxmemory_policy"] == "noeviction"


def test_an_out_of_memory_redis_is_named_in_the_answer_and_the_log(tmp_path, redis_server, caplog):
    with LiveServer(settings_for(tmp_path / "home", redis_server.url)) as srv, \
            srv.client(admin=True) as c:
        r = connect(redis_server.url)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)  # every write is refused from now on; reads still work
        try:
            with caplog.at_level(logging.WARNING, logger="service.errors"):
                answer = c.post("/masks/import", files={"file": ("m.safetensors", make_mask(0.5, 71, "oom"))})
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert answer.json() == {"detail": "Redis is out of memory (maxmemory reached)"}
            logged = [rec.getMessage() for rec in caplog.records if rec.name == "service.errors"]
            assert any("out of memory" in m for m in logged), logged
            assert c.get("/domains").status_code == 200  # reads are served meanwhile
        finally:
            r.config_set("maxmemory", 0)


def test_a_read_only_redis_is_named_in_the_answer(tmp_path):
    with EmbeddedRedis(tmp_path / "primary") as primary, EmbeddedRedis(tmp_path / "replica") as replica, \
            LiveServer(settings_for(tmp_path / "home", replica.url)) as srv, srv.client(admin=True) as c:
        connect(replica.url).replicaof("127.0.0.1", primary.port)  # as after a failover gone wrong
        answer = c.post("/masks/import", files={"file": ("m.safetensors", make_mask(0.5, 72, "ro"))})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
        assert answer.json() == {"detail": "Redis is read-only (a replica, or a failover in progress)"}
