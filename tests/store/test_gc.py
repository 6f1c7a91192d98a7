"""Blob collection that cannot delete everything, on a real redis-server and (for S3) moto's
server over real HTTP: after Redis loses its keys, when two deployments share one prefix, when
the references vanish or shrink, past the cap of one sweep, and when a blob is put again.

Marks (a blob's last put) are real times, so sweeps run at `now` well past them; the grace is
shortened (a setting, SLT_GC_GRACE_S) instead of waited for."""
from __future__ import annotations

import time
from functools import cache

from s3_faults import faulty_s3  # noqa: F401 (a fixture)

from store.blobs import RedisBlobs, S3Blobs
from store.catalog import SharedCatalog
from store.checkpoints import SharedCheckpoints
from store.connection import connect
from store.datasets import SharedDatasets
from store.domains import DomainRegistry
from store.gc import collect_blobs
from store.jobs import JobStore
from store.moments import SharedMoments
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import config_from, random_mask

G = 10.0  # the shortened grace


@cache  # a mask takes seconds to make
def mask_bytes(seed: int) -> bytes:
    return random_mask(BaseSpec(width=0.0625), config_from("demo", seed=seed), "0" * 64, domain=f"d{seed}")


def fill(client, blobs, tmp_path) -> dict:
    """A deployment's store: two masks, a dataset, a job's checkpoint, feature statistics."""
    cat = SharedCatalog(client, blobs, MaskCatalog(tmp_path / "host-a" / "masks"))
    masks = [cat.publish(mask_bytes(s))[0] for s in (1, 2)]
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(range(256)) * 100)
    datasets = SharedDatasets(client, blobs, 1 << 30)
    datasets.publish("ds", folder)
    ckpt = SharedCheckpoints(client, blobs, 1 << 30)
    client.set("slt:job:j1:lease", "w/t")
    (tmp_path / "ck.pt").write_bytes(b"checkpoint" * 500)
    ckpt.publish("j1", tmp_path / "ck.pt", 3, "w/t")
    moments = SharedMoments(client, blobs)
    (tmp_path / "mom").mkdir()
    (tmp_path / "mom" / "abcd-vgg-x.safetensors").write_bytes(b"moments")
    moments.push(tmp_path / "mom", "abcd")
    return {"catalog": cat, "masks": masks, "sources": [cat.referenced_blobs, datasets.referenced,
                                                         ckpt.referenced, moments.referenced]}


def test_after_redis_loses_its_keys_two_sweeps_delete_nothing_in_s3(faulty_s3, client, tmp_path):  # noqa: F811
    blobs = S3Blobs("slt", endpoint_url=faulty_s3.endpoint_url)
    store = fill(client, blobs, tmp_path)
    t = time.time() + 1000
    collect_blobs(client, blobs, store["sources"], grace_s=G, now=t)
    before = set(blobs.ids())
    assert len(before) == 5
    client.flushall()  # Redis lost every key: manifests, index, candidates, its deployment id
    assert store["catalog"].sync_local() == 2  # the host re-publishes the masks it holds
    for i in (1, 2):  # two sweeps more than a grace apart (today: the second deletes 3 blobs)
        collect_blobs(client, blobs, store["sources"], grace_s=G, now=t + i * (G + 1))
    assert set(blobs.ids()) == before
    assert all(blobs.get(b) is not None for b in before)


def test_two_deployments_sharing_one_prefix_never_delete_each_others_blobs(faulty_s3, server, client):  # noqa: F811
    other = connect(server.url.rsplit("/", 1)[0] + "/1")  # another deployment: its own Redis DB
    blobs_a = S3Blobs("slt", endpoint_url=faulty_s3.endpoint_url)
    blobs_b = S3Blobs("slt", endpoint_url=faulty_s3.endpoint_url)
    a, b = blobs_a.put(b"only A uses me"), blobs_b.put(b"only B uses me")
    t = time.time() + 1000
    for i in range(4):
        ra = collect_blobs(client, blobs_a, [lambda: {a}], grace_s=G, now=t + i * (G + 1))
        rb = collect_blobs(other, blobs_b, [lambda: {b}], grace_s=G, now=t + i * (G + 1) + 0.5)
    assert blobs_a.get(b) is not None and blobs_b.get(a) is not None
    assert "also claimed by" in ra.refused and "also claimed by" in rb.refused
    other.flushdb()


def test_a_sweep_refuses_when_references_vanish_or_shrink_and_deletes_at_most_its_cap(client):
    blobs = RedisBlobs(client)
    refs: set[str] = set()
    t = time.time() + 1000
    collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=t)  # an empty store: claimed
    ids = [blobs.put(f"blob {i}".encode()) for i in range(12)]
    refs |= set(ids)
    collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=t + 1)  # a baseline of 12
    refs.clear()  # e.g. Redis emptied under the collector, or pointed at the wrong DB
    for i in (1, 2):
        collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=t + 1 + i * (G + 1))
    assert sorted(blobs.ids()) == sorted(ids)  # today: all twelve deleted
    refs |= set(ids[:2])  # 12 -> 2: more than half of the references gone at once
    for i in (3, 4):
        sweep = collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=t + 1 + i * (G + 1))
        assert "shrank from 12 to 2" in sweep.refused
    assert sorted(blobs.ids()) == sorted(ids)
    # the shrink lasted a quarantine (a real mass delete): accepted, and collected by the cap
    later = t + 100 + 86400
    assert collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=later).candidates == 10
    sweep = collect_blobs(client, blobs, [lambda: refs], grace_s=G, now=later + G + 1)
    assert (sweep.deleted, sweep.left_for_later) == (3, 7)  # a quarter of the 12 present
    assert len(list(blobs.ids())) == 9 and set(ids[:2]) <= set(blobs.ids())


def test_a_blob_put_again_is_not_deleted_within_the_grace(client):
    clock = [time.time()]
    blobs = RedisBlobs(client, clock=lambda: clock[0])
    t = clock[0] + 10
    collect_blobs(client, blobs, [], grace_s=1000, now=t)  # an empty store: claimed
    kept, orphan = blobs.put(b"referenced"), blobs.put(b"unreferenced for long")
    collect_blobs(client, blobs, [lambda: {kept}], grace_s=1000, now=t + 1)  # orphan first seen
    clock[0] = t + 5000
    assert blobs.put(b"unreferenced for long") == orphan  # deduplicated onto it by a new upload
    collect_blobs(client, blobs, [lambda: {kept}], grace_s=1000, now=t + 5010)
    assert blobs.get(orphan) is not None  # unreferenced for 5009 s, but put 10 s ago
    sweep = collect_blobs(client, blobs, [lambda: {kept}], grace_s=1000, now=t + 6001)
    assert sweep.deleted == 1 and blobs.get(orphan) is None and blobs.get(kept) is not None


def test_redis_blobs_after_a_flush_keep_what_a_domain_or_a_host_references(client, tmp_path, monkeypatch):
    """Through the watchdog's own maintenance, the grace and quarantine shortened by settings."""
    from store.settings import SharedSettings
    from worker.runner import Context
    from worker.watchdog import Watchdog

    monkeypatch.setenv("SLT_GC_GRACE_S", str(G))
    monkeypatch.setenv("SLT_GC_QUARANTINE_S", "100")
    settings = SharedSettings(home=tmp_path / "home")
    blobs = RedisBlobs(client)
    host_a = SharedCatalog(client, blobs, MaskCatalog(tmp_path / "a" / "masks"))
    host_b = MaskCatalog(tmp_path / "b" / "masks")  # B's cache of a mask made elsewhere
    m1, _ = host_a.publish(mask_bytes(1))
    m2, _ = host_a.publish(mask_bytes(2))
    host_b.add(mask_bytes(3))
    m3 = host_b.ids()[0]
    ctx = Context(None, settings, client, JobStore(client), blobs, host_a, DomainRegistry(client),
                  SharedDatasets(client, blobs, 1 << 30), SharedCheckpoints(client, blobs, 1 << 30),
                  SharedMoments(client, blobs), "test:1")
    dog = Watchdog(ctx)
    t = time.time() + 1000
    dog.maintain(force=True, now=t)
    client.flushall()
    assert host_a.sync_local() == 2  # host A re-publishes its masks
    blobs.put(host_b.bytes(m3))  # host B re-puts the one a domain serves, not (yet) indexed
    DomainRegistry(client).promote("d", m3)
    DomainRegistry(client).promote("e", m1)
    DomainRegistry(client).promote("e", m2)
    orphan = blobs.put(b"a blob nothing names")
    for i in range(3):  # quarantine (100 s): nothing at all is deleted
        dog.maintain(force=True, now=t + i * (G + 1))
    assert {m1, m2, m3, orphan} <= set(blobs.ids())
    for i in range(3):  # after it: the orphan goes, what a domain or host references stays
        dog.maintain(force=True, now=t + 200 + i * (G + 1))
    assert set(blobs.ids()) == {m1, m2, m3}
