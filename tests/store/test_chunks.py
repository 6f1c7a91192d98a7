"""Chunks are shared by content: a failed upload, a replaced or dropped checkpoint never deletes a
chunk that another manifest names; and a checkpoint is published only by its job's lease holder
(fencing). On a real redis-server; the upload path through the real API under uvicorn with S3
through moto's server behind the fault-injecting proxy (tests/s3_faults.py)."""
from __future__ import annotations

import io
import os
import zipfile

import pytest
from s3_faults import faulty_s3  # noqa: F401 (a fixture)
from slt_stack import Stack

from store.blobs import CHUNK_BYTES, RedisBlobs, S3Blobs, put_chunked
from store.checkpoints import SharedCheckpoints
from store.connection import connect
from store.datasets import SharedDatasets, pack_folder


class Disconnecting(io.RawIOBase):
    """An upload stream whose client goes away after `n` bytes."""

    def __init__(self, data: bytes, n: int):
        self.src, self.n = io.BytesIO(data), n

    def read(self, size: int = -1) -> bytes:
        if self.src.tell() >= self.n:
            raise ConnectionResetError("client disconnected")
        return self.src.read(size)


def dataset_folder(path, size: int):
    path.mkdir()
    (path / "a.bin").write_bytes(os.urandom(size))
    (path / "b.txt").write_text("labels\n")
    return path


def test_a_failed_second_upload_of_an_identical_archive_leaves_the_first_dataset_complete(client, tmp_path):
    blobs = RedisBlobs(client)
    shared = SharedDatasets(client, blobs, max_bytes=1 << 30)
    folder = dataset_folder(tmp_path / "up", 2 * CHUNK_BYTES + CHUNK_BYTES // 2)
    first = shared.publish("first", folder)
    assert len(first["chunks"]) == 3
    pack_folder(folder, tmp_path / "same.zip")  # the bytes a second upload of it sends
    data = (tmp_path / "same.zip").read_bytes()
    with pytest.raises(ConnectionResetError):  # its client goes away after two chunks
        put_chunked(blobs, Disconnecting(data, 2 * CHUNK_BYTES), max_bytes=1 << 30)
    with pytest.raises(ValueError, match="cap"):  # once more, refused over a cap after two chunks
        put_chunked(blobs, io.BytesIO(data), max_bytes=2 * CHUNK_BYTES + 1)
    assert all(blobs.get(c) is not None for c in first["chunks"])
    got = shared.fetch("first", tmp_path / "other-host")  # as another host fetches it: verified
    assert (got / "a.bin").read_bytes() == (folder / "a.bin").read_bytes()


def test_a_replaced_or_dropped_checkpoint_keeps_the_chunks_another_job_names(client, tmp_path):
    blobs = RedisBlobs(client)
    ckpt = SharedCheckpoints(client, blobs, max_bytes=1 << 30)
    same = os.urandom(3 * 1000)  # two jobs of one config and seed checkpoint the same bytes
    for job in ("j1", "j2"):
        client.set(f"slt:job:{job}:lease", f"{job}/t")
        (tmp_path / f"{job}.pt").write_bytes(same)
        assert ckpt.publish(job, tmp_path / f"{job}.pt", 5, f"{job}/t") is not None
    shared_chunks = ckpt.manifest("j2")["chunks"]
    (tmp_path / "j1.pt").write_bytes(os.urandom(2000))
    newer = ckpt.publish("j1", tmp_path / "j1.pt", 9, "j1/t")  # replaces j1's: today deletes j2's chunks
    assert all(blobs.get(c) is not None for c in shared_chunks)
    assert ckpt.fetch("j2", tmp_path / "b" / "j2.pt") == 5
    assert (tmp_path / "b" / "j2.pt").read_bytes() == same
    ckpt.drop("j2")  # j2 done; its chunks named by nobody else go at once
    assert all(blobs.get(c) is None for c in shared_chunks)
    (tmp_path / "j1.pt").write_bytes(os.urandom(2000))
    ckpt.publish("j1", tmp_path / "j1.pt", 12, "j1/t")
    assert all(blobs.get(c) is None for c in newer["chunks"])  # an unshared older one still goes


def test_a_worker_that_lost_its_lease_cannot_publish_or_delete_a_checkpoint(client, tmp_path):
    blobs = RedisBlobs(client)
    ckpt = SharedCheckpoints(client, blobs, max_bytes=1 << 30)
    lease = "slt:job:j1:lease"
    client.set(lease, "w1/a")
    src = tmp_path / "ck.pt"
    src.write_bytes(b"by w1" * 100)
    ours = ckpt.publish("j1", src, 3, "w1/a")
    client.set(lease, "w2/b")  # w1's lease expired; w2 took the job over and published
    src2 = tmp_path / "ck2.pt"
    src2.write_bytes(b"by w2" * 100)
    theirs = ckpt.publish("j1", src2, 4, "w2/b")
    assert theirs is not None and all(blobs.get(c) is None for c in ours["chunks"])
    src.write_bytes(b"w1, stale" * 100)
    assert ckpt.publish("j1", src, 8, "w1/a") is None  # fenced out
    assert ckpt.manifest("j1")["iteration"] == 4 and all(blobs.get(c) for c in theirs["chunks"])
    client.delete(lease)  # nobody holds it
    assert ckpt.publish("j1", src, 8, "w1/a") is None and ckpt.manifest("j1")["iteration"] == 4

    class LosesLeaseMidWrite(RedisBlobs):  # the lease moves on while w2's chunks are written
        def put(self, data: bytes) -> str:
            client.set(lease, "w3/c")
            return super().put(data)

    client.set(lease, "w2/b")
    src2.write_bytes(b"w2, later" * 100)
    late = SharedCheckpoints(client, LosesLeaseMidWrite(client), max_bytes=1 << 30)
    assert late.publish("j1", src2, 6, "w2/b") is None  # the manifest write itself is fenced
    assert ckpt.manifest("j1")["iteration"] == 4 and all(blobs.get(c) for c in theirs["chunks"])


def _archive(src, n: int) -> bytes:
    buf = io.BytesIO()
    files = sorted(src.glob("*.png"))[:n]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, f"img/{f.name}")
    return buf.getvalue()


def test_through_the_upload_route_a_second_upload_failing_in_s3_leaves_the_first_complete(
        faulty_s3, tmp_path, emoji_google_dir):  # noqa: F811
    archive = _archive(emoji_google_dir, 3000)  # > 8 MB packed: at least two chunks
    st = Stack(tmp_path / "home", SLT_S3_BUCKET="slt", SLT_S3_ENDPOINT_URL=faulty_s3.endpoint_url)
    try:
        st.start_api()
        with st.client() as api:
            r = api.post("/datasets", data={"name": "first"},
                         files={"file": ("a.zip", archive, "application/zip")}, timeout=120)
            assert r.status_code == 201, r.text
            r_client = connect(st.redis.url)
            blobs = S3Blobs("slt", endpoint_url=faulty_s3.direct_url)
            manifest = SharedDatasets(r_client, blobs, 1 << 40).get("first")
            assert len(manifest["chunks"]) >= 2
            # the object store fails on the second chunk of the identical second upload
            victim = manifest["chunks"][1]
            faulty_s3.fail_next(1000, None, path_contains=victim)
            r = api.post("/datasets", data={"name": "second"},
                         files={"file": ("a.zip", archive, "application/zip")}, timeout=120)
            faulty_s3.clear()
            got = SharedDatasets(r_client, blobs, 1 << 40).fetch("first", tmp_path / "other-host")
            assert got is not None and len(list((got / "img").glob("*.png"))) == 3000
            assert r.status_code == 503, r.text  # the store's fault, said so; not a 500
            assert SharedDatasets(r_client, blobs, 1 << 40).get("second") is None
            r = api.post("/datasets", data={"name": "second"},
                         files={"file": ("a.zip", archive, "application/zip")}, timeout=120)
            assert r.status_code == 201, r.text  # the store is back: the retry goes through
    finally:
        st.close()
