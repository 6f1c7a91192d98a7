"""Deletions that stay deleted, evaluations that leave no orphan, versions that survive a store
loss and a bounded per-host mask folder: on a real redis-server, two "hosts" (each its own
masks folder) sharing it."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from store.blobs import RedisBlobs
from store.catalog import INDEX, DeletedMask, SharedCatalog, UnindexedMask
from store.domains import DomainRegistry
from store.settings import SharedSettings
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import config_from, random_mask


def mask_bytes(seed: int) -> bytes:
    return random_mask(BaseSpec(width=0.0625), config_from("demo", seed=seed), "0" * 64, domain=f"d{seed}")


def mid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def host(client, root: Path, **kw) -> SharedCatalog:
    return SharedCatalog(client, RedisBlobs(client), MaskCatalog(root), **kw)


# ---- tombstones ------------------------------------------------------------------------------

def test_a_host_that_missed_a_delete_drops_its_file_instead_of_publishing_it_again(client, tmp_path):
    a, b = host(client, tmp_path / "a"), host(client, tmp_path / "b")
    data = mask_bytes(1)
    mask_id, _ = a.publish(data)
    assert b.bytes(mask_id) == data and mask_id in b.local  # host b holds a copy
    assert a.delete(mask_id)
    assert mask_id in b.local  # b was down: it heard nothing

    assert b.sync_local() == 0  # b starts again
    assert mask_id not in b.local and mask_id not in a and a.count() == 0
    assert not client.exists(f"slt:mask:{mask_id}") and not a.blobs.exists(mask_id)


def test_reads_refuse_a_deleted_mask_and_drop_this_hosts_copy(client, tmp_path):
    a, b = host(client, tmp_path / "a"), host(client, tmp_path / "b")
    data = mask_bytes(2)
    mask_id, _ = a.publish(data)
    b.bytes(mask_id)
    a.delete(mask_id)
    with pytest.raises(DeletedMask, match="was deleted"):
        b.bytes(mask_id)
    assert mask_id not in b.local
    b.local.add(data)  # a copy put back by hand
    with pytest.raises(KeyError):
        b.read(mask_id)
    assert mask_id not in b.local


def test_only_an_explicit_reimport_lifts_a_tombstone(client, tmp_path):
    a, b = host(client, tmp_path / "a"), host(client, tmp_path / "b")
    data = mask_bytes(3)
    mask_id, _ = a.publish(data)
    a.delete(mask_id)
    with pytest.raises(DeletedMask):
        b.publish(data)  # a worker, a sync, the demo seeding
    assert mask_id not in a and mask_id not in b.local and not a.blobs.exists(mask_id)
    assert b.publish(data, lift_tombstone=True) == (mask_id, False)  # the admin's import
    assert mask_id in a and a.bytes(mask_id) == data and a.deleted_at(mask_id) is None


def test_an_evaluation_racing_a_delete_leaves_no_orphan_entry(client, tmp_path):
    a = host(client, tmp_path / "a")
    mask_id, _ = a.publish(mask_bytes(4))
    started, results = threading.Event(), []

    def evaluate():
        for i in range(300):
            results.append(a.record_evaluation(mask_id, {f"split{i % 3}": {"fid": float(i)}}))
            if i == 20:
                started.set()

    t = threading.Thread(target=evaluate)
    t.start()
    started.wait()
    a.delete(mask_id)
    t.join()
    assert results[0] is True and results[-1] is False
    assert not client.exists(f"slt:mask:{mask_id}")
    assert a.entry(mask_id) is None and client.zscore(INDEX, mask_id) is None


def test_a_promotion_names_only_an_indexed_live_mask(client, tmp_path):
    a = host(client, tmp_path / "a")
    reg = DomainRegistry(client)
    data = mask_bytes(5)
    unindexed = mid(data)
    a.blobs.put(data)  # a blob alone is not a catalog entry
    with pytest.raises(UnindexedMask, match="not in the catalog"):
        reg.promote("d", unindexed, guard=a.promotion_guard(unindexed))
    mask_id, _ = a.publish(data)
    assert reg.promote("d", mask_id, guard=a.promotion_guard(mask_id))["mask_id"] == mask_id
    reg.delete("d")
    a.delete(mask_id)
    with pytest.raises(DeletedMask):
        reg.promote("d", mask_id, guard=a.promotion_guard(mask_id))
    assert reg.get("d") is None


def test_the_demo_seeding_never_brings_back_a_deleted_shipped_mask(client, tmp_path):
    from worker.app import producer
    from worker.demo import DEMO_DATASETS, seed_shipped_masks
    from worker.runner import Context

    settings = SharedSettings(home=tmp_path / "home", base="width=0.0625", search_features="random")
    for name in DEMO_DATASETS:
        settings.dataset_path(name).mkdir(parents=True)
    url = client.connection_pool.connection_kwargs
    ctx = Context.for_app(producer(f"redis://{url['host']}:{url['port']}/0"), settings)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    data = mask_bytes(6)
    (shipped / "emoji-google.safetensors").write_bytes(data)
    assert seed_shipped_masks(ctx, shipped) == ["emoji-google"]
    ctx.domains.delete("emoji-google")
    ctx.catalog.delete(mid(data))

    assert seed_shipped_masks(ctx, shipped) == []  # the next start of a worker
    assert mid(data) not in ctx.catalog and not ctx.blobs.exists(mid(data))
    assert mid(data) not in ctx.catalog.local
    client.delete("slt:shipped:emoji-google")  # even without the flag: the tombstone refuses it
    assert seed_shipped_masks(ctx, shipped) == []
    assert mid(data) not in ctx.catalog and ctx.domains.get("emoji-google") is None


# ---- versions across a store loss ------------------------------------------------------------

def test_versions_never_restart_below_what_a_replica_holds(client):
    held = {"v": 0}
    reg = DomainRegistry(client, floor=lambda: held["v"])
    rec = reg.promote("d", "a" * 64)
    held["v"] = rec["version"] + 10  # a replica holds a newer version than this store knows
    client.flushall()
    assert reg.promote("d", "b" * 64)["version"] == held["v"] + 1


def test_a_replica_writes_back_what_it_holds_only_over_nothing_or_older(client):
    reg = DomainRegistry(client)
    kept = {"name": "d", "mask_id": "a" * 64, "pinned": True, "history": [], "version": 7}
    client.flushall()
    assert reg.restore(kept) and reg.get("d")["mask_id"] == "a" * 64 and reg.version() >= 7
    assert not reg.restore({**kept, "mask_id": "b" * 64})  # same version: the registry's stays
    newer = reg.promote("d", "c" * 64)
    assert newer["version"] > 7 and not reg.restore(kept)
    assert reg.restore({"name": "d", "version": newer["version"] + 1, "deleted": True})
    assert reg.get("d") is None and "d" not in reg.names()
    assert reg.raise_version(100) == 100 and reg.raise_version(5) == 100


# ---- the per-host masks folder ---------------------------------------------------------------

def test_the_masks_folder_evicts_shared_files_lru_and_keeps_local_only_and_served_ones(client, tmp_path):
    datas = [mask_bytes(10 + i) for i in range(8)]
    size = len(datas[0])
    assert all(len(d) == size for d in datas)
    served: set[str] = set()
    a = host(client, tmp_path / "a", local_budget_bytes=4 * size, protected=lambda: served)
    only_here = mid(datas[0])
    a.local.add(datas[0])  # copied in by hand: in no shared store
    p1, p2, p3 = (a.publish(d)[0] for d in datas[1:4])  # four files: at the bound
    served.add(p1)  # a domain of this host serves p1
    assert a.bytes(p2) == datas[2]  # used: p2 is now more recent than p3

    p4, _ = a.publish(datas[4])  # over: the least recently used shared, unserved file goes
    assert set(a.local.ids()) == {only_here, p1, p2, p4}
    p5, _ = a.publish(datas[5])
    assert set(a.local.ids()) == {only_here, p1, p4, p5}
    a.local.remove(p4)
    a.local.remove(p5)
    p6, p7 = mid(datas[6]), mid(datas[7])
    a.local.add(datas[6])  # files only this host has
    assert a.bytes(p2) == datas[2]  # fetched back from the shared store: at the bound again
    a.local.add(datas[7])
    assert a.bytes(p3) == datas[3]  # over by two: the unserved p2 first, then the served p1
    assert set(a.local.ids()) == {only_here, p6, p7, p3}
    assert sum(s for _, s, _ in a.local.usage()) <= 4 * size


# ---- the domain listener of an API replica ---------------------------------------------------

def test_the_domain_listener_uses_the_one_redis_socket_timeout(server, client, tmp_path):
    from service.domain_mirror import DomainMirror
    from service.engine import Engine
    from service.settings import Settings

    settings = Settings(home=tmp_path / "home", redis_url=server.url, base="width=0.0625",
                        redis_socket_timeout_s=1.5)
    engine = Engine(settings, host(client, tmp_path / "a"), DomainRegistry(client), server.url)
    assert engine.mirror.socket_timeout_s == 1.5
    mirror = DomainMirror(DomainRegistry(client), server.url, socket_timeout_s=1.5)
    mirror.start()
    try:
        deadline = time.monotonic() + 30
        while not mirror.listening:
            assert time.monotonic() < deadline, "the listener never subscribed"
            time.sleep(0.05)
        kwargs = mirror.listener_client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 1.5
    finally:
        mirror.stop()


def test_a_replica_notices_a_store_loss_and_writes_back_what_it_holds(client):
    from service.domain_mirror import DomainMirror

    reg = DomainRegistry(client)
    mirror = DomainMirror(reg)
    reg.floor = mirror.highest_version
    for name, m in (("x", "a"), ("y", "b"), ("x", "c")):
        mirror.apply(reg.promote(name, m * 64))
    mirror.apply(reg.delete("y"))
    mirror.refresh()  # the marker is seen
    top = mirror.highest_version()
    x = reg.get("x")

    client.flushall()
    mirror.refresh()  # a re-read of a lost store: nothing held is taken for deleted
    assert mirror.active("x") == "c" * 64
    assert reg.get("x") == x and reg.version() >= top and reg.get("y") is None
    assert reg.promote("x", "d" * 64)["version"] > top

    client.set("slt:domains:version", 1)  # an older snapshot: marker kept, versions behind
    assert mirror.check_store() and reg.version() >= top
    assert not mirror.check_store()  # once recovered, the store is intact again

    reg.delete("x")  # a deletion whose message never reached this replica, in an intact store
    mirror.refresh()
    assert mirror.active("x") is None and reg.get("x") is None



def test_a_replica_that_missed_a_delete_forgets_the_mask_in_ram_on_the_device_and_on_disk(
        server, client, tmp_path):
    from service.engine import Engine
    from service.settings import Settings
    from trainer.masks import decode_mask

    settings = Settings(home=tmp_path / "home", redis_url=server.url, base="width=0.0625")
    other, here = host(client, tmp_path / "other"), host(client, tmp_path / "here")
    engine = Engine(settings, here, DomainRegistry(client), server.url)  # not started: no listener
    data = mask_bytes(30)
    mask_id, _ = other.publish(data)
    engine.masks.put(decode_mask(here.bytes(mask_id)))  # held in RAM, on disk
    engine._cache.put(mask_id, {}, 0, set())  # and "resident" on the device
    assert mask_id in engine.masks and engine.is_resident(mask_id) and mask_id in here.local

    other.delete(mask_id)  # the deletion's message never reached this replica
    engine.mirror.refresh()  # its next re-read of the registry
    assert mask_id not in engine.masks and not engine.is_resident(mask_id)
    assert mask_id not in here.local
