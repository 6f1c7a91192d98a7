"""Operations at scale, through real HTTP and a real Redis: deleting masks and domains on every
replica, the RAM cache of masks within its byte bound, versioned domain changes under races,
and readiness while Redis is down."""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from live_server import LiveServer, make_mask, pixels, reference, reference_grid, settings_for

from service.domain_mirror import DomainMirror
from service.mask_cache import ram_bytes
from store.connection import EmbeddedRedis, connect
from store.domains import DomainRegistry
from trainer.masks import decode_mask


def mid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as r:
        yield r


@pytest.fixture(scope="module")
def pair(tmp_path_factory, redis_server):
    """Two replicas (own homes, one Redis), as behind a load balancer."""
    with LiveServer(settings_for(tmp_path_factory.mktemp("a"), redis_server.url)) as a, \
            LiveServer(settings_for(tmp_path_factory.mktemp("b"), redis_server.url)) as b:
        yield a, b


def _import(client: httpx.Client, data: bytes) -> str:
    r = client.post("/masks/import", files={"file": ("m.safetensors", data)})
    assert r.status_code in (200, 201), r.text
    return r.json()["mask_id"]


def _generated(client: httpx.Client, domain: str, seed: int = 3, n: int = 2) -> httpx.Response:
    return client.get("/generate", params={"domain": domain, "seed": seed, "n": n})


def _eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# deletes ------------------------------------------------------------------------------


def test_delete_mask_refuses_a_used_mask_and_force_rolls_back_on_every_replica(pair):
    a, b = pair
    m1, m2 = make_mask(0.5, 31, "del"), make_mask(0.3, 32, "del")
    with a.client(admin=True) as ca, b.client() as cb:
        i1, i2 = _import(ca, m1), _import(ca, m2)
        assert ca.put("/domains/del-x", json={"mask_id": i1}).status_code == 200
        assert ca.put("/domains/del-x", json={"mask_id": i2}).status_code == 200
        r = _generated(cb, "del-x")  # replica b serves it too (fetched from the shared store)
        assert r.status_code == 200 and r.headers["x-mask-id"] == i2
        b_file = b.settings.masks_dir / f"{i2}.safetensors"
        assert b_file.is_file()

        r = ca.delete(f"/masks/{i2}")  # served by del-x
        assert r.status_code == 409 and "del-x" in r.json()["detail"], r.text
        r = ca.delete(f"/masks/{i1}")  # del-x may roll back to it
        assert r.status_code == 409 and "del-x" in r.json()["detail"] and "history" in r.json()["detail"]
        assert ca.get(f"/masks/{i2}").status_code == 200  # nothing was removed

        r = ca.delete(f"/masks/{i2}", params={"force": "true"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mask_id"] == i2 and body["deleted"] is True
        assert [(d["name"], d["mask_id"], d["deleted"]) for d in body["domains"]] == [("del-x", i1, False)]
        for c in (ca, cb):  # both replicas roll back, and the mask is gone from both
            _eventually(lambda c=c: _generated(c, "del-x").headers.get("x-mask-id") == i1)
            r = _generated(c, "del-x")
            assert np.array_equal(pixels(r.content), reference_grid(reference(m1, 3, 2)))
            assert c.get(f"/masks/{i2}").status_code == 404
            assert c.get(f"/masks/{i2}/file").status_code == 404
        _eventually(lambda: not b_file.exists())
        assert i2 not in b.engine.masks and not b.engine.is_resident(i2)
        assert not (a.settings.masks_dir / f"{i2}.safetensors").exists()
        history = ca.get("/domains/del-x").json()["history"]
        assert i2 not in [h["mask_id"] for h in history]

        # the last mask of a domain, forced: the domain goes with it
        r = ca.delete(f"/masks/{i1}", params={"force": "true"})
        assert r.status_code == 200
        assert [(d["name"], d["deleted"]) for d in r.json()["domains"]] == [("del-x", True)]
        for c in (ca, cb):
            _eventually(lambda c=c: _generated(c, "del-x").status_code == 404)
        assert ca.delete(f"/masks/{i1}").status_code == 404
        assert ca.delete(f"/masks/{'0' * 64}").status_code == 404
    with a.client() as anon:
        assert anon.delete(f"/masks/{'0' * 64}").status_code == 401


def test_unused_mask_is_deleted_without_force(pair):
    a, _ = pair
    data = make_mask(0.6, 33)
    with a.client(admin=True) as c:
        i = _import(c, data)
        r = c.delete(f"/masks/{i}")
        assert r.status_code == 200 and r.json() == {"mask_id": i, "deleted": True, "domains": []}
        assert i not in {m["mask_id"] for m in c.get("/masks").json()}


def test_delete_domain_on_every_replica_keeps_its_mask(pair):
    a, b = pair
    data = make_mask(0.4, 34, "gone")
    with a.client(admin=True) as ca, b.client() as cb:
        i = _import(ca, data)
        ca.put("/domains/gone", json={"mask_id": i}).raise_for_status()
        assert _generated(cb, "gone").status_code == 200
        r = ca.delete("/domains/gone")
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["name"] == "gone" and rec["deleted"] is True and rec["mask_id"] == i
        assert rec["version"] > 0
        for c in (ca, cb):
            _eventually(lambda c=c: _generated(c, "gone").status_code == 404)
            assert c.get("/domains/gone").status_code == 404
        assert ca.delete("/domains/gone").status_code == 404
        assert ca.get(f"/masks/{i}").status_code == 200  # the mask stays in the catalog
        # created again: a newer version than the deletion's tombstone, so it applies
        ca.put("/domains/gone", json={"mask_id": i}).raise_for_status()
        for c in (ca, cb):
            _eventually(lambda c=c: _generated(c, "gone").status_code == 200)


# versions -----------------------------------------------------------------------------


def test_an_older_record_applied_after_a_newer_one_is_ignored(redis_server):
    registry = DomainRegistry(connect(redis_server.url))
    seen = []
    mirror = DomainMirror(registry, on_change=seen.append)  # no listener: applied by hand
    r1 = registry.promote("versions", "1" * 64)
    r2 = registry.promote("versions", "2" * 64)
    assert r2["version"] > r1["version"]
    assert mirror.apply(r2) and not mirror.apply(r1)
    assert mirror.active("versions") == "2" * 64 and len(seen) == 1
    # a message of the older version changes nothing either; a deletion's tombstone holds
    mirror.on_message(b'{"domain": "versions", "version": %d}' % r1["version"], registry)
    assert mirror.held("versions").version == r2["version"]
    gone = registry.delete("versions")
    assert mirror.apply(gone) and mirror.active("versions") is None
    assert not mirror.apply(r2)  # a late reply from before the deletion
    assert mirror.active("versions") is None
    r3 = registry.promote("versions", "3" * 64)
    assert mirror.apply(r3) and mirror.active("versions") == "3" * 64
    # records written before versions (0 on both sides) still replace each other
    old = {"name": "legacy", "mask_id": "4" * 64, "pinned": False}
    assert mirror.apply(old) and mirror.apply({**old, "mask_id": "5" * 64})
    assert mirror.active("legacy") == "5" * 64


def test_promotion_race_never_leaves_a_replica_on_an_older_version(pair, redis_server):
    a, _ = pair
    masks = [make_mask(0.5, 40 + i, "race") for i in range(3)]
    direct = DomainRegistry(connect(redis_server.url))  # as a worker or another replica
    with a.client(admin=True) as c:
        ids = [_import(c, m) for m in masks]
        c.put("/domains/race", json={"mask_id": ids[0]}).raise_for_status()
    errors: list[BaseException] = []

    def through_route(k: int) -> None:
        try:
            with a.client(admin=True) as c:
                for j in range(12):
                    r = c.put("/domains/race", json={"mask_id": ids[(k + j) % 3]})
                    assert r.status_code == 200, r.text
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    def directly() -> None:
        try:
            for j in range(24):
                direct.promote("race", ids[j % 3], by="job")
        except BaseException as e:
            errors.append(e)

    for _ in range(3):
        threads = [threading.Thread(target=through_route, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=directly))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        newest = direct.get("race")
        _eventually(lambda v=newest["version"]: a.engine.mirror.held("race").version == v, timeout=5)
        time.sleep(0.3)  # late messages and replies must not move it back
        held = a.engine.mirror.held("race")
        assert (held.version, held.mask_id) == (newest["version"], newest["mask_id"])
        with a.client() as c:
            assert _generated(c, "race").headers["x-mask-id"] == newest["mask_id"]


# the RAM cache ------------------------------------------------------------------------


def test_ram_cache_stays_within_its_byte_bound_and_serves_every_mask(tmp_path, redis_server):
    masks = [make_mask(0.2 + 0.015 * i, 100 + i, f"lru-{i}") for i in range(40)]
    one = ram_bytes(decode_mask(masks[0]))
    bound = int(5.5 * one)
    settings = settings_for(tmp_path / "home", redis_server.url, mask_ram_bytes=bound,
                            device_cache_bytes=1)  # every step rebuilds its weights from the bits
    with LiveServer(settings) as srv, srv.client(admin=True) as c:
        for i, data in enumerate(masks):
            c.put(f"/domains/lru-{i}", json={"mask_id": _import(c, data)}).raise_for_status()
            assert srv.engine.masks.bytes <= bound
        assert len(srv.engine.masks) == 5
        for rnd in range(2):  # and again: each mask is loaded back from this host's disk
            for i, data in enumerate(masks):
                r = c.get("/generate", params={"domain": f"lru-{i}", "seed": i, "n": 2, "format": "json"})
                assert r.status_code == 200, r.text
                got = np.stack([pixels(base64.b64decode(s)) for s in r.json()["images"]])
                assert np.array_equal(got, reference(data, i, 2)), (rnd, i)
                ready = c.get("/readyz").json()
                assert ready["masks_ram_bytes"] <= bound and ready["masks_in_ram"] <= 5
                assert ready["masks_ram_budget"] == bound
        text = c.get("/metrics").text
        ram = float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("slt_masks_ram_bytes ")))
        assert 0 < ram <= bound


# readiness ----------------------------------------------------------------------------


def test_readyz_is_degraded_while_redis_is_killed_and_known_domains_still_generate(tmp_path):
    root = tmp_path / "redis"
    redis_server = EmbeddedRedis(root).start()
    m1, m2 = make_mask(0.5, 51, "blip"), make_mask(0.35, 52, "blip")
    # room for one mask in RAM and one on the device: the other is read back from disk
    settings = settings_for(tmp_path / "home", redis_server.url,
                            mask_ram_bytes=ram_bytes(decode_mask(m1)), device_cache_bytes=1)
    try:
        with LiveServer(settings) as srv, srv.client(admin=True) as c:
            for name, data in (("blip-a", m1), ("blip-b", m2)):
                c.put(f"/domains/{name}", json={"mask_id": _import(c, data)}).raise_for_status()
            ready = c.get("/readyz").json()
            assert ready["status"] == "ready" and ready["redis"] and ready["domains_known"] == 2

            os.kill(redis_server.proc.pid, signal.SIGKILL)
            redis_server.proc.wait(10)
            r = c.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "degraded" and r.json()["redis"] is False
            for name, data in (("blip-a", m1), ("blip-b", m2), ("blip-a", m1)):
                r = _generated(c, name, seed=9)
                assert r.status_code == 200, r.text
                assert np.array_equal(pixels(r.content), reference_grid(reference(data, 9, 2)))
            r = _generated(c, "never-known")  # needs Redis: a 503 with Retry-After, never a 500
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "Redis" in r.json()["detail"]
            for r in (c.get("/domains"), c.get("/jobs"), c.get("/masks"),  # the store's errors:
                      c.post("/masks", json={"domain": "x", "dataset": "tiny"})):  # one mapping
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert r.json() == {"detail": "Redis is unreachable"}
            assert c.get("/metrics").status_code == 200  # without the job counts

            redis_server = EmbeddedRedis(root, port=redis_server.port).start()  # back
            _eventually(lambda: c.get("/readyz").json().get("status") == "ready", timeout=15)
    finally:
        redis_server.stop()


# the shared catalog -------------------------------------------------------------------


def test_every_replica_lists_the_same_masks_with_their_evaluations(pair, redis_server):
    a, b = pair
    data = make_mask(0.45, 60, "listed")
    foreign = make_mask(0.45, 60, "listed", base="width=0.0625,seed=5")  # a worker of another base
    with a.client(admin=True) as ca, b.client() as cb:
        i = _import(ca, data)
        a.app.state.core.catalog.record_evaluation(i, {"heldout": {"fid": 12.5, "n": 8}})
        fi, _ = a.app.state.core.catalog.publish(foreign)  # indexed, but not for this base
        listed_a = {m["mask_id"]: m for m in ca.get("/masks").json()}
        listed_b = {m["mask_id"]: m for m in cb.get("/masks").json()}
        assert list(listed_a) == list(listed_b)  # same masks, newest first
        assert listed_b[i]["evaluation"] == {"heldout": {"fid": 12.5, "n": 8}}
        assert listed_b[i]["served"] and listed_b[i]["k"] == 0.45
        assert not listed_b[fi]["served"] and listed_b[fi].get("error") is None
        assert cb.get(f"/masks/{i}").json()["evaluation"] == listed_b[i]["evaluation"]
        page = cb.get("/masks", params={"limit": 1, "offset": 1}).json()
        assert [m["mask_id"] for m in page] == list(listed_b)[1:2]
        r = ca.put("/domains/listed-foreign", json={"mask_id": fi})
        assert r.status_code == 409 and "base" in r.json()["detail"]
        assert not listed_b[fi]["served"]
