"""Deletions and store losses across hosts, with real processes: two API replicas (uvicorn, each
its own SLT_HOME, no shared disk) on one redis-server.

- A mask deleted while replica B is down stays deleted when B starts again: B neither lists
  nor serves it, its file is gone, the index does not regain it, and no domain can promote it.
- After FLUSHALL both replicas keep serving the same bytes, the masks are re-published from the
  hosts' caches, a later promotion through A reaches B, and two blob-collection sweeps delete
  nothing a host or a domain still references.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from slt_stack import TOKEN, Stack

from store.blobs import RedisBlobs
from store.catalog import INDEX, SharedCatalog
from store.checkpoints import SharedCheckpoints
from store.connection import connect
from store.datasets import SharedDatasets
from store.domains import DomainRegistry
from store.gc import collect_blobs
from store.moments import SharedMoments
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import config_from, random_mask

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def mask_bytes(seed: int) -> bytes:
    return random_mask(BaseSpec(width=0.0625), config_from("demo", seed=seed), "0" * 64, domain=f"m{seed}")


def mid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def eventually(check, what: str, timeout: float = 60.0):
    """Poll `check` until it returns something truthy (a condition, never a duration)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.2)


def import_mask(c: httpx.Client, data: bytes) -> str:
    r = c.post("/masks/import", files={"file": ("m.safetensors", data)})
    assert r.status_code in (200, 201), r.text
    return r.json()["mask_id"]


def listed(c: httpx.Client) -> set[str]:
    r = c.get("/masks")
    assert r.status_code == 200, r.text
    return {m["mask_id"] for m in r.json()}


def served(c: httpx.Client, domain: str) -> tuple[str, str] | None:
    """(mask_id, sha256 of the PNG) of one fixed request, or None if not served."""
    r = c.get("/generate", params={"domain": domain, "seed": 11, "n": 2})
    if r.status_code != 200:
        return None
    return r.headers["x-mask-id"], hashlib.sha256(r.content).hexdigest()


def collect_twice(client, grace_s: float = 1.0) -> int:
    """Two blob-collection sweeps `grace_s` apart on the clock they are given, with the
    references the watchdog gives them, and no quarantine: the sweeps really run (neither is
    refused), so what they keep is what the references keep. Returns the blobs deleted."""
    blobs = RedisBlobs(client)
    catalog = SharedCatalog(client, blobs, MaskCatalog(Path("/nonexistent-never-written")))
    sources = [catalog.referenced_blobs, SharedDatasets(client, blobs, 1 << 30).referenced,
               SharedCheckpoints(client, blobs, 1 << 30).referenced, SharedMoments(client, blobs).referenced,
               DomainRegistry(client).referenced]
    now = time.time() + 10 * grace_s  # every blob was put longer than a grace ago
    options = dict(grace_s=grace_s, quarantine_s=0.0, max_delete_fraction=1.0)
    sweeps = [collect_blobs(client, blobs, sources, now=now, **options),
              collect_blobs(client, blobs, sources, now=now + 2 * grace_s, **options)]
    assert [s.refused for s in sweeps] == [None, None], sweeps
    return sum(s.deleted for s in sweeps)


@pytest.fixture
def stack(tmp_path):
    st = Stack(tmp_path / "host-a")
    try:
        yield st
    finally:
        st.close()


def stop_replica(st: Stack, proc) -> None:
    proc.terminate()
    proc.wait(60)


def test_a_mask_deleted_while_a_replica_is_down_stays_deleted(stack, tmp_path):
    st, home_b = stack, tmp_path / "host-b"
    url_a = st.start_api()
    url_b = st.start_api(home=home_b, name="api-b")
    data = mask_bytes(1)
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=60) as a:
        mask_id = import_mask(a, data)
    with httpx.Client(base_url=url_b, timeout=60) as b:
        r = b.get(f"/masks/{mask_id}/file")  # B fetches it and keeps a copy
        assert r.status_code == 200 and r.content == data
    b_file = home_b / "masks" / f"{mask_id}.safetensors"
    assert b_file.is_file()

    stop_replica(st, st.replicas[-1])  # B is down
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=60) as a:
        r = a.delete(f"/masks/{mask_id}")
        assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert b_file.is_file()  # B heard nothing

    url_b = st.start_api(home=home_b, name="api-b")  # B starts again
    redis = connect(st.redis.url)
    with httpx.Client(base_url=url_b, headers=AUTH, timeout=60) as b:
        assert mask_id not in listed(b)
        assert b.get(f"/masks/{mask_id}").status_code == 404
        r = b.get(f"/masks/{mask_id}/file")
        assert r.status_code == 404, r.status_code
        assert not b_file.exists()
        r = b.put("/domains/back", json={"mask_id": mask_id})  # no promotion brings it back
        assert r.status_code == 404 and "deleted" in r.json()["detail"], r.text
        never = mid(mask_bytes(2))
        r = b.put("/domains/back", json={"mask_id": never})
        assert r.status_code == 404 and "not in the catalog" in r.json()["detail"], r.text
        assert b.get("/domains/back").status_code == 404
    assert redis.zscore(INDEX, mask_id) is None and not redis.exists(f"slt:mask:{mask_id}")
    assert not RedisBlobs(redis).exists(mask_id)
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=60) as a:
        assert mask_id not in listed(a)
        r = a.post("/masks/import", files={"file": ("m.safetensors", data)})  # the explicit way back
        assert r.status_code == 201, r.text
        assert mask_id in listed(a)


def test_after_flushall_replicas_keep_serving_republish_and_hear_later_promotions(stack, tmp_path):
    st, home_a, home_b = stack, tmp_path / "host-a", tmp_path / "host-b"
    url_a = st.start_api()
    url_b = st.start_api(home=home_b, name="api-b")
    m1, m2, m3 = mask_bytes(11), mask_bytes(12), mask_bytes(13)
    redis = connect(st.redis.url)
    with httpx.Client(base_url=url_a, headers=AUTH, timeout=60) as a, \
            httpx.Client(base_url=url_b, headers=AUTH, timeout=60) as b:
        i1, i2 = import_mask(a, m1), import_mask(a, m2)
        assert a.put("/domains/shared", json={"mask_id": i2}).status_code == 200
        assert a.put("/domains/shared", json={"mask_id": i1}).status_code == 200
        before = eventually(lambda: served(a, "shared"), "A serves the domain")
        assert before[0] == i1
        assert eventually(lambda: served(b, "shared") == before, "B serves the same bytes")
        version = a.get("/domains/shared").json()["version"]

        redis.flushall()  # the store loses everything
        assert served(a, "shared") == before and served(b, "shared") == before

        # re-published from the hosts' caches: A imported both, B fetched the served one
        eventually(lambda: {i1, i2} <= listed(a) and {i1, i2} <= listed(b), "masks listed again")
        blobs = RedisBlobs(redis)
        assert blobs.get(i1) == m1 and blobs.get(i2) == m2
        rec = eventually(lambda: (r := a.get("/domains/shared")).status_code == 200 and r.json(),
                         "the domain record written back")
        assert rec["mask_id"] == i1 and rec["version"] >= version
        assert int(redis.get("slt:domains:version")) >= version
        assert served(a, "shared") == before and served(b, "shared") == before

        i3 = import_mask(a, m3)  # a promotion made after the loss, through A
        r = a.put("/domains/shared", json={"mask_id": i3})
        assert r.status_code == 200 and r.json()["version"] > version, r.text
        after = eventually(lambda: (s := served(a, "shared")) and s[0] == i3 and s, "A serves m3")
        assert eventually(lambda: served(b, "shared") == after, "B serves m3's pixels")

    assert collect_twice(redis) == 0
    registry = DomainRegistry(redis)
    for home in (home_a, home_b):  # nothing a host holds or a domain names was collected
        for mask_id in MaskCatalog(home / "masks").ids():
            assert blobs.exists(mask_id), mask_id
    for mask_id in registry.referenced():
        assert blobs.exists(mask_id), mask_id
    assert {i1, i2, i3} <= registry.referenced()
