"""The shared store on a real redis-server: chunked blobs, the catalog seen from two hosts with
no shared disk, versioned domains, shared datasets and moments, blob collection, and the job
store's failure cap, stall detection, status indexes and retention."""
from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
from slt_stack import copy_images

from store.blobs import BlobError, RedisBlobs, get_chunked, put_chunked
from store.catalog import SharedCatalog
from store.checkpoints import SharedCheckpoints
from store.datasets import SharedDatasets
from store.domains import CHANNEL, DomainRegistry
from store.gc import collect_blobs
from store.jobs import FAILED, QUEUED, RUNNING, STATUSES, JobStore
from store.moments import SharedMoments
from trainer.data import open_dataset
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog, MaskError
from trainer.search import config_from, random_mask


def mask_bytes(seed: int) -> bytes:
    cfg = config_from("demo", seed=seed)
    return random_mask(BaseSpec(width=0.0625), cfg, "0" * 64, domain=f"d{seed}")


def test_a_masks_provenance_is_recorded_once_and_only_for_an_indexed_mask(client, tmp_path):
    """How its job made a mask (for its model card): the first record stays, a mask not in the
    index gets none, and a deletion takes it with the entry."""
    cat = SharedCatalog(client, RedisBlobs(client), MaskCatalog(tmp_path / "a"))
    mask_id, _ = cat.publish(mask_bytes(2))
    assert cat.entry(mask_id)["provenance"] == {}
    assert cat.record_provenance(mask_id, {"job_id": "j1", "dataset": "faces", "search_seconds": 2.5})
    assert not cat.record_provenance(mask_id, {"job_id": "j2"})  # a retry, or a second job
    assert cat.entry(mask_id)["provenance"] == {"job_id": "j1", "dataset": "faces", "search_seconds": 2.5}
    assert not cat.record_provenance("f" * 64, {"job_id": "j3"})
    assert not client.exists("slt:mask:" + "f" * 64)
    cat.delete(mask_id)
    assert not cat.record_provenance(mask_id, {"job_id": "j4"}) and cat.entry(mask_id) is None


def test_chunked_blobs_round_trip_and_detect_damage(client, tmp_path):
    blobs = RedisBlobs(client)
    data = bytes(range(256)) * 5000  # 1.28 MB
    manifest = put_chunked(blobs, io.BytesIO(data), chunk_bytes=100_000)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest() and manifest["bytes"] == len(data)
    assert len(manifest["chunks"]) == 13
    assert get_chunked(blobs, manifest, tmp_path / "out").read_bytes() == data
    client.set("slt:blob:" + manifest["chunks"][3], b"x" * 100_000)  # damaged in the store
    with pytest.raises(BlobError):
        get_chunked(blobs, manifest, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="cap"):
        put_chunked(blobs, io.BytesIO(data), max_bytes=len(data) - 1, chunk_bytes=100_000)


def test_two_hosts_without_a_shared_disk_see_one_catalog(client, tmp_path):
    blobs = RedisBlobs(client)
    a = SharedCatalog(client, blobs, MaskCatalog(tmp_path / "a"))
    b = SharedCatalog(client, blobs, MaskCatalog(tmp_path / "b"))
    data = mask_bytes(1)
    mask_id, existed = a.publish(data)
    assert not existed and a.publish(data) == (mask_id, True)
    assert mask_id in b and b.ids() == [mask_id] and b.count() == 1
    assert not (tmp_path / "b" / f"{mask_id}.safetensors").exists()
    assert b.bytes(mask_id) == data  # fetched from the blob, then kept on host b
    assert (tmp_path / "b" / f"{mask_id}.safetensors").read_bytes() == data
    a.record_evaluation(mask_id, {"heldout": {"kid": 0.1, "n": 10}})
    b.record_evaluation(mask_id, {"train": {"kid": 0.2, "n": 10}})
    assert b.entry(mask_id)["evaluation"] == {"heldout": {"kid": 0.1, "n": 10}, "train": {"kid": 0.2, "n": 10}}
    assert a.entry(mask_id)["info"]["domain"] == "d1"
    with pytest.raises(MaskError):
        a.publish(b"not a mask")
    ps = client.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(CHANNEL)
    assert a.delete(mask_id)
    deadline, msg = time.monotonic() + 5, None
    while msg is None and time.monotonic() < deadline:
        msg = ps.get_message(timeout=0.5)
    assert json.loads(msg["data"]) == {"mask": mask_id, "deleted": True}
    assert mask_id not in b and b.entry(mask_id) is None and blobs.get(mask_id) is None
    b.drop_local(mask_id)
    with pytest.raises(KeyError):
        b.bytes(mask_id)


def test_local_files_from_before_the_shared_index_are_published(client, tmp_path):
    local = MaskCatalog(tmp_path / "old")
    data = mask_bytes(2)
    mask_id = local.add(data)
    local.record_metrics(mask_id, {"heldout": {"fid": 3.0}})
    cat = SharedCatalog(client, RedisBlobs(client), local)
    assert cat.sync_local() == 1 and cat.sync_local() == 0
    assert cat.entry(mask_id)["evaluation"] == {"heldout": {"fid": 3.0}}


def test_domain_versions_only_grow_and_deletes_are_versioned(client):
    reg = DomainRegistry(client)
    v = [reg.promote("alpha", "a" * 64)["version"], reg.promote("alpha", "b" * 64)["version"],
         reg.set_pinned("alpha", True)["version"]]
    assert v == sorted(v) and len(set(v)) == 3
    client.set("slt:domains:version", 0)  # a counter reset (restored old snapshot) must not go back
    assert reg.promote("alpha", "c" * 64)["version"] > v[-1]
    gone = reg.delete("alpha")
    assert gone["deleted"] and gone["version"] > v[-1] and reg.get("alpha") is None
    assert reg.delete("alpha") is None
    assert reg.promote("alpha", "a" * 64)["version"] > gone["version"]
    with pytest.raises(KeyError):
        reg.set_pinned("nope", True)


def test_forget_mask_rolls_back_or_removes_domains(client):
    reg = DomainRegistry(client)
    x, y = "1" * 64, "2" * 64
    reg.promote("keeps", y)
    reg.promote("keeps", x)  # serving x, may roll back to y
    reg.promote("only", x)  # serving x, nothing to roll back to
    reg.promote("past", x)
    reg.promote("past", y)  # x only in its history
    assert reg.references(x) == {"active": ["keeps", "only"], "history": ["past"]}
    reg.forget_mask(x)
    assert reg.get("keeps")["mask_id"] == y and reg.get("only") is None
    assert [h["mask_id"] for h in reg.get("past")["history"]] == [y]
    assert reg.references(x) == {"active": [], "history": []}


def test_uploaded_dataset_is_the_same_dataset_on_another_host(client, tmp_path, emoji_google_dir):
    folder = copy_images(emoji_google_dir, tmp_path / "a" / "datasets" / "up" / "nested", n=12).parent
    shared = SharedDatasets(client, RedisBlobs(client), max_bytes=50 << 20)
    manifest = shared.publish("up", folder, {"images": 12, "format": "folder"})
    assert [m["name"] for m in shared.list()] == ["up"] and manifest["images"] == 12
    got = shared.fetch("up", tmp_path / "b" / "cache")
    assert got.is_dir() and shared.fetch("up", tmp_path / "b" / "cache") == got  # once per host
    here, there = open_dataset(folder), open_dataset(got)
    assert there.keys == here.keys and there.dataset_sha256 == here.dataset_sha256
    assert shared.fetch("nope", tmp_path) is None
    with pytest.raises(ValueError, match="cap"):
        SharedDatasets(client, RedisBlobs(client), max_bytes=1000).publish("big", folder)
    assert [m["name"] for m in shared.list()] == ["up"]


def test_moments_and_checkpoints_travel_between_hosts(client, tmp_path):
    blobs = RedisBlobs(client)
    moments = SharedMoments(client, blobs)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "abcd-vgg-x.safetensors").write_bytes(b"m1")
    (tmp_path / "a" / "ffff-vgg-x.safetensors").write_bytes(b"m2")
    assert moments.push(tmp_path / "a", "abcd") == 1 and moments.push(tmp_path / "a", "abcd") == 0
    assert moments.pull(tmp_path / "b", "abcd") == 1
    assert (tmp_path / "b" / "abcd-vgg-x.safetensors").read_bytes() == b"m1"
    assert not (tmp_path / "b" / "ffff-vgg-x.safetensors").exists()

    ckpt = SharedCheckpoints(client, blobs, max_bytes=1 << 20)
    client.set("slt:job:j1:lease", "w1/t")  # the publisher holds the job's lease
    src = tmp_path / "ck.pt"
    src.write_bytes(b"first" * 1000)
    old = ckpt.publish("j1", src, 3, "w1/t")
    src.write_bytes(b"second" * 1000)
    assert ckpt.publish("j1", src, 7, "w1/t")["iteration"] == 7
    assert all(blobs.get(c) is None for c in old["chunks"])  # the older one is dropped
    assert ckpt.fetch("j1", tmp_path / "other" / "ck.pt") == 7
    assert (tmp_path / "other" / "ck.pt").read_bytes() == b"second" * 1000
    src.write_bytes(b"x" * (2 << 20))
    assert ckpt.publish("j1", src, 9, "w1/t") is None  # over the cap: stays local
    ckpt.drop("j1")
    assert ckpt.fetch("j1", tmp_path / "x.pt") is None


def test_unreferenced_blobs_are_collected_after_the_grace(client, tmp_path):
    blobs = RedisBlobs(client)
    cat = SharedCatalog(client, blobs, MaskCatalog(tmp_path / "a"))
    kept, _ = cat.publish(mask_bytes(3))
    orphan = blobs.put(b"orphan")
    sources = [cat.referenced_blobs]
    t = time.time() + 1000  # past the blobs' marks (their puts) by more than the grace
    sweep = {"grace_s": 100, "quarantine_s": 0}  # a claim on a non-empty store: no quarantine here
    assert collect_blobs(client, blobs, sources, now=t, **sweep).deleted == 0  # first seen
    assert collect_blobs(client, blobs, sources, now=t + 50, **sweep).deleted == 0  # within grace
    assert collect_blobs(client, blobs, sources, now=t + 101, **sweep).deleted == 1
    assert blobs.get(orphan) is None and blobs.get(kept) is not None


# ---- jobs ----------------------------------------------------------------------------------

def new_job(store: JobStore) -> str:
    return store.create(domain="d", dataset="x", preset="demo", config={"iterations": 10}, base={},
                        promote=False, time_limit_s=3600)["job_id"]


def run(store: JobStore, job_id: str, owner: str = "w1"):
    lease = store.lease(job_id, owner, 30)
    assert lease.acquire() and store.start(lease, owner) == "ok"
    return lease


def test_a_job_that_keeps_failing_is_failed_at_the_cap_with_its_reason(client):
    store = JobStore(client)
    job_id = new_job(store)
    for attempt in (1, 2):
        lease = run(store, job_id)
        client.delete(lease.key)  # the worker died: its lease ran out
        assert store.requeue_running(job_id, "lost", max_failures=3, error="worker lost") == "requeued"
        assert store.get(job_id)["failures"] == attempt
    run(store, job_id)
    client.delete(store.key(job_id, "lease"))
    assert store.requeue_running(job_id, "lost", max_failures=3,
                                 error="worker lost 3 times, last at iteration 0") == FAILED
    job = store.get(job_id)
    assert job["status"] == FAILED and job["error"] == "worker lost 3 times, last at iteration 0"
    assert job["attempts"] == 3 and job["finished"] is not None and job_id not in store.active_ids()


def test_a_stalled_job_loses_its_lease_and_is_requeued(client):
    store = JobStore(client)
    job_id = new_job(store)
    lease = run(store, job_id)
    store.update(lease, {"heartbeat": time.time() - 100})
    assert store.requeue_running(job_id, "x", kind="lost") == "leased"  # alive: not lost
    assert store.requeue_running(job_id, "x", kind="stalled", since=time.time() - 200) == "progressing"
    assert store.requeue_running(job_id, "stalled", kind="stalled", since=time.time() - 50) == "requeued"
    assert store.lease_holder(job_id) is None and store.get(job_id)["status"] == QUEUED
    assert not lease.renew()  # the hung worker finds out at its next heartbeat


def test_handback_needs_the_lease_and_counts_a_failure(client):
    store = JobStore(client)
    job_id = new_job(store)
    lease = run(store, job_id)
    assert store.requeue_running(job_id, "x", kind="handback", token="someone-else") == "lost"
    assert store.requeue_running(job_id, "x", kind="handback", token=lease.token, max_failures=1,
                                 error="failed 1 times; last error: OSError") == FAILED
    assert store.get(job_id)["error"] == "failed 1 times; last error: OSError"


def test_status_indexes_count_without_scanning_and_list_by_status(client):
    store = JobStore(client)
    ids = [new_job(store) for _ in range(5)]
    run(store, ids[0])
    lease = run(store, ids[1])
    store.finish(lease, "succeeded", finished=time.time())
    store.request_cancel(ids[2])
    counts = store.counts()
    assert counts == {"queued": 2, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 1}
    assert set(counts) == set(STATUSES)
    assert [j["job_id"] for j in store.list(QUEUED)] == [ids[4], ids[3]]
    assert [j["job_id"] for j in store.list(RUNNING)] == [ids[0]]
    # independent count: read every record
    by_record = {}
    for j in ids:
        st = store.get(j)["status"]
        by_record[st] = by_record.get(st, 0) + 1
    assert {k: v for k, v in counts.items() if v} == by_record


def test_indexes_are_built_once_for_jobs_recorded_before_them(client):
    store = JobStore(client)
    ids = [new_job(store) for _ in range(3)]
    client.delete(*(f"slt:jobs:status:{s}" for s in STATUSES), "slt:jobs:indexed")
    store.set_fields(ids[0], status="succeeded", finished=time.time())
    assert store.counts()["queued"] == 0
    assert store.ensure_indexes() == 3 and store.ensure_indexes() == 0
    assert store.counts()["queued"] == 2 and store.counts()["succeeded"] == 1


def test_retention_deletes_finished_jobs_only_and_leaves_nothing_behind(client):
    store = JobStore(client)
    old, recent, live = new_job(store), new_job(store), new_job(store)
    for job_id in (old, recent):
        lease = run(store, job_id)
        store.update(lease, {"preview_iteration": 5}, point=(5, 1.0), preview=b"png")
        store.finish(lease, "succeeded", finished=time.time())
    client.zadd("slt:jobs:finished", {old: time.time() - 1000})
    assert store.expired(500) == [old]
    assert not store.delete(live)  # a job still queued is never deleted
    assert store.delete(old)
    assert store.preview(old) is None and store.losses(old) == [] and store.get(old) is None
    # nothing of it is left: no key under its name, no index entry
    assert [k for k in client.scan_iter(match=f"slt:job:{old}*")] == []
    for index in ("slt:jobs", "slt:jobs:finished", *(f"slt:jobs:status:{s}" for s in STATUSES)):
        assert client.zscore(index, old) is None, index
    assert store.counts()["succeeded"] == 1 and [j["job_id"] for j in store.list()] == [live, recent]
    assert store.preview(recent) == b"png" and store.losses(recent) == [[5, 1.0]]
    assert store.expired(500) == [] and live in store.active_ids()


def test_s3_compatible_store_holds_blobs_and_chunked_files(tmp_path, monkeypatch):
    """Against moto's S3 server over real HTTP (no bucket service can run here otherwise)."""
    from moto import server as server_mod
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    from store.blobs import S3Blobs
    from store.connection import free_port

    port = free_port()
    srv = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    srv.start()
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="slt")
        blobs = S3Blobs("slt", endpoint_url=url)
        data = mask_bytes(4)
        blob_id = blobs.put(data)
        assert blob_id == hashlib.sha256(data).hexdigest() and blobs.get(blob_id) == data
        assert blobs.exists(blob_id) and list(blobs.ids()) == [blob_id]
        manifest = put_chunked(blobs, io.BytesIO(data * 3), chunk_bytes=len(data))
        assert get_chunked(blobs, manifest, tmp_path / "f").read_bytes() == data * 3
        blobs.delete(blob_id)
        assert blobs.get(blob_id) is None and not blobs.exists(blob_id)
    finally:
        srv.stop()
