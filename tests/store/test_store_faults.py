"""Transient faults of the object store on the read paths, through a fault-injecting proxy in
front of moto's S3 server (tests/s3_faults.py): a missing or corrupt blob is as before (None,
BlobError), a store that answers 5xx raises StoreUnavailable, so a job waits and retries
instead of starting over; once the store answers again the same read gives the right bytes."""
from __future__ import annotations

import pytest
from s3_faults import faulty_s3  # noqa: F401 (a fixture)

from store.blobs import S3Blobs
from store.checkpoints import SharedCheckpoints
from store.datasets import SharedDatasets
from store.faults import StoreUnavailable
from store.moments import SharedMoments


def published_checkpoint(client, blobs, tmp_path, data: bytes) -> SharedCheckpoints:
    ckpt = SharedCheckpoints(client, blobs, max_bytes=1 << 30)
    client.set("slt:job:j1:lease", "w1/t")
    src = tmp_path / "ck.pt"
    src.write_bytes(data)
    assert ckpt.publish("j1", src, 41, "w1/t") is not None
    return ckpt


def test_an_s3_outage_during_a_checkpoint_fetch_is_store_unavailable_then_it_resumes(
        faulty_s3, client, tmp_path):  # noqa: F811
    blobs = S3Blobs("slt", endpoint_url=faulty_s3.endpoint_url)
    data = bytes(range(256)) * 40_000  # 10 MB: two chunks
    ckpt = published_checkpoint(client, blobs, tmp_path, data)
    dest = tmp_path / "here" / "ck.pt"
    # a blip: botocore retries a 5xx itself (3 more attempts), the caller sees nothing
    faulty_s3.fail_next(2, "GET", path_contains="/slt/blobs/")
    assert ckpt.fetch("j1", dest) == 41 and dest.read_bytes() == data
    assert faulty_s3.served_faults == 2 and faulty_s3.pending() == 0
    dest.unlink()
    # an outage longer than those retries: StoreUnavailable (today: a ClientError, which the
    # job takes for its own error), and no partial file
    faulty_s3.fail_next(1000, "GET", path_contains="/slt/blobs/")
    with pytest.raises(StoreUnavailable, match="500") as caught:
        ckpt.fetch("j1", dest)
    assert caught.value.__cause__ is not None  # chained: the S3 error itself
    assert not dest.exists() and not list(dest.parent.glob(".tmp-*"))
    faulty_s3.clear()
    assert ckpt.fetch("j1", dest) == 41 and dest.read_bytes() == data  # the store is back
    # a chunk really gone is still "no checkpoint" (the job starts from its start)
    for chunk in ckpt.manifest("j1")["chunks"]:
        blobs.delete(chunk)
    assert ckpt.fetch("j1", tmp_path / "x.pt") is None


def test_dataset_fetch_and_moments_pull_meet_an_outage_as_store_unavailable(faulty_s3, client, tmp_path):  # noqa: F811
    blobs = S3Blobs("slt", endpoint_url=faulty_s3.endpoint_url)
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 5000)
    shared = SharedDatasets(client, blobs, max_bytes=1 << 30)
    sha = shared.publish("up", folder)["sha256"]
    moments = SharedMoments(client, blobs)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "abcd-vgg-x.safetensors").write_bytes(b"m1")
    assert moments.push(tmp_path / "m", "abcd") == 1

    faulty_s3.fail_next(1000, "GET", path_contains="/slt/blobs/")
    with pytest.raises(StoreUnavailable):
        shared.fetch("up", tmp_path / "cache")
    assert not (tmp_path / "cache" / "shared-datasets" / sha).exists()
    with pytest.raises(StoreUnavailable):
        moments.pull(tmp_path / "m2", "abcd")  # today: skipped, then computed again
    faulty_s3.clear()
    got = shared.fetch("up", tmp_path / "cache")
    assert (got / "a.bin").read_bytes() == b"a" * 5000
    assert moments.pull(tmp_path / "m2", "abcd") == 1
