"""The HTTP API through real HTTP: determinism, hot swaps, every contract error, concurrency."""
from __future__ import annotations

import hashlib
import io
import json
import random
import re
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from live_server import (
    TOKEN,
    LiveServer,
    ReplicaProcess,
    make_mask,
    pixels,
    reference,
    reference_grid,
    settings_for,
    wait_ready,
)
from PIL import Image

from store.blobs import RedisBlobs
from store.connection import EmbeddedRedis, connect
from store.domains import DomainRegistry
from trainer.masks import decode_mask

DOMAINS = {"alpha": (0.5, 1), "beta": (0.3, 2), "gamma": (0.7, 3)}  # name -> (k, seed)


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    with LiveServer(settings_for(tmp_path_factory.mktemp("home"), redis_url,
                                 batch_window_ms=20)) as srv:
        yield srv


@pytest.fixture(scope="module")
def masks(server) -> dict[str, bytes]:
    """Three masks imported through the API, each the active mask of its domain."""
    out = {}
    with server.client(admin=True) as c:
        for name, (k, seed) in DOMAINS.items():
            data = make_mask(k, seed, name)
            r = c.post("/masks/import", files={"file": (f"{name}.safetensors", data)})
            assert r.status_code in (200, 201), r.text
            r = c.put(f"/domains/{name}", json={"mask_id": mask_id(data)})
            assert r.status_code == 200, r.text
            out[name] = data
    return out


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture
def admin(server):
    with server.client(admin=True) as c:
        yield c


def mask_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_refs: dict[tuple[str, int, int], np.ndarray] = {}
_refs_lock = threading.Lock()


def ref(data: bytes, seed: int, n: int) -> np.ndarray:
    key = (mask_id(data), seed, n)
    with _refs_lock:
        if key not in _refs:
            _refs[key] = reference(data, seed, n)
        return _refs[key]


def json_images(body: dict) -> np.ndarray:
    import base64

    return np.stack([pixels(base64.b64decode(s)) for s in body["images"]])


def assert_error(r: httpx.Response, code: int) -> dict:
    assert r.status_code == code, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_png_equals_the_trainer_reference_for_any_n(client, masks, seed):
    data = masks["alpha"]
    r1 = client.get("/generate", params={"domain": "alpha", "seed": seed})
    assert r1.status_code == 200 and r1.headers["content-type"] == "image/png"
    assert np.array_equal(pixels(r1.content), ref(data, seed, 1)[0])
    r5 = client.get("/generate", params={"domain": "alpha", "seed": seed, "n": 5})
    assert np.array_equal(pixels(r5.content), reference_grid(ref(data, seed, 5)))
    rj = client.get("/generate", params={"domain": "alpha", "seed": seed, "n": 9, "format": "json"})
    assert rj.status_code == 200
    assert np.array_equal(json_images(rj.json()), ref(data, seed, 9))
    # image i never depends on n: the first images of a longer request are the shorter one's
    assert np.array_equal(json_images(rj.json())[:5], ref(data, seed, 5))


def test_webp_is_lossless_and_png_text_carries_provenance(client, masks):
    data = masks["beta"]
    r = client.get("/generate", params={"domain": "beta", "seed": 11, "format": "webp"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert np.array_equal(pixels(r.content), ref(data, 11, 1)[0])
    r = client.get("/generate", params={"domain": "beta", "seed": 11, "n": 3})
    text = Image.open(io.BytesIO(r.content)).text
    assert text["domain"] == "beta" and text["mask_id"] == mask_id(data)
    assert text["seed"] == "11" and text["index"] == "0,1,2"
    assert text["base_sha256"] == r.headers["x-base-sha256"] == decode_mask(data).base_sha256
    assert r.headers["x-seed"] == "11" and r.headers["x-mask-id"] == mask_id(data)


def test_drawn_seed_is_returned_and_reproduces(client, masks):
    r = client.get("/generate", params={"domain": "gamma", "n": 2, "format": "json"})
    body = r.json()
    seed = body["seed"]
    assert int(r.headers["x-seed"]) == seed == body["provenance"]["seed"]
    assert body["provenance"] == {"domain": "gamma", "mask_id": mask_id(masks["gamma"]),
                                  "base_sha256": r.headers["x-base-sha256"], "seed": seed,
                                  "indices": [0, 1]}
    assert np.array_equal(json_images(body), ref(masks["gamma"], seed, 2))
    png = client.get("/generate", params={"domain": "gamma"})
    again = client.get("/generate", params={"domain": "gamma", "seed": png.headers["x-seed"]})
    assert Image.open(io.BytesIO(png.content)).text["seed"] == png.headers["x-seed"]
    assert np.array_equal(pixels(png.content), pixels(again.content))


# swaps -------------------------------------------------------------------------------


def _served(client, domain: str, seed: int = 5) -> tuple[str, np.ndarray]:
    r = client.get("/generate", params={"domain": domain, "seed": seed, "n": 2, "format": "json"})
    assert r.status_code == 200, r.text
    return r.headers["x-mask-id"], json_images(r.json())


def test_promote_and_roll_back_apply_to_the_next_request(client, admin, masks):
    a, b = masks["alpha"], masks["beta"]
    assert _served(client, "alpha")[0] == mask_id(a)
    r = admin.put("/domains/alpha", json={"mask_id": mask_id(b)})
    assert r.status_code == 200 and r.json()["mask_id"] == mask_id(b)
    got, images = _served(client, "alpha")
    assert got == mask_id(b) and np.array_equal(images, ref(b, 5, 2))
    r = admin.put("/domains/alpha", json={"mask_id": r.json()["history"][1]["mask_id"]})  # rollback
    history = [h["mask_id"] for h in r.json()["history"]]
    assert history[:3] == [mask_id(a), mask_id(b), mask_id(a)]
    got, images = _served(client, "alpha")
    assert got == mask_id(a) and np.array_equal(images, ref(a, 5, 2))


def _wait_for_mask(client, domain: str, want: str, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _served(client, domain)[0] == want:
            return time.monotonic() - t0
        time.sleep(0.01)
    raise AssertionError(f"{domain} still not on {want[:12]} after {timeout}s")


def test_promotion_from_another_connection_arrives_by_pubsub(client, masks, redis_url):
    a, c = masks["alpha"], masks["gamma"]
    other = DomainRegistry(connect(redis_url))  # as a worker (or another replica) would
    other.promote("alpha", mask_id(c), by="job")
    assert _wait_for_mask(client, "alpha", mask_id(c)) < 1.0
    assert np.array_equal(_served(client, "alpha")[1], ref(c, 5, 2))
    other.promote("alpha", mask_id(a), by="test")
    _wait_for_mask(client, "alpha", mask_id(a))


def test_replicas_at_different_thread_counts_serve_the_same_bytes(server, masks, redis_url, tmp_path):
    """The README's promise, same pixels from any replica: one replica at 1 thread, one at 3,
    and the in-process server (2) give identical PNG bytes and the one-thread reference."""
    params = {"domain": "alpha", "seed": 123, "n": 6}
    with ReplicaProcess(tmp_path / "one", redis_url, threads=1) as one, \
            ReplicaProcess(tmp_path / "three", redis_url, threads=3) as three:
        bodies = []
        for url in (one.url, three.url, server.url):
            r = httpx.get(f"{url}/generate", params=params, timeout=60)
            assert r.status_code == 200, r.text
            bodies.append(r.content)
        assert httpx.get(f"{three.url}/readyz", timeout=10).json()["torch_threads"] == 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert np.array_equal(pixels(bodies[0]), reference_grid(ref(masks["alpha"], 123, 6)))


def test_a_second_replica_without_shared_disk_follows_promotions(server, admin, masks, redis_url,
                                                                 tmp_path):
    a, b = masks["alpha"], masks["beta"]
    with ReplicaProcess(tmp_path / "replica-home", redis_url) as replica, \
            httpx.Client(base_url=replica.url, timeout=60) as rc:
        # the replica's catalog is empty: it fetches the mask from its Redis blob
        got, images = _served(rc, "alpha")
        assert got == mask_id(a) and np.array_equal(images, ref(a, 5, 2))
        admin.put("/domains/alpha", json={"mask_id": mask_id(b)})
        _wait_for_mask(rc, "alpha", mask_id(b))
        assert np.array_equal(_served(rc, "alpha")[1], ref(b, 5, 2))
        admin.put("/domains/alpha", json={"mask_id": mask_id(a)})
        _wait_for_mask(rc, "alpha", mask_id(a))
    assert (tmp_path / "replica-home" / "masks" / f"{mask_id(a)}.safetensors").is_file()


def test_pinned_domain_is_resident(client, admin, masks):
    r = admin.put("/domains/gamma", json={"pinned": True})
    assert r.status_code == 200 and r.json()["pinned"] is True
    _served(client, "gamma")
    gamma = {d["name"]: d for d in client.get("/domains").json()}["gamma"]
    assert gamma["pinned"] and gamma["resident"] and gamma["mask_id"] == mask_id(masks["gamma"])
    admin.put("/domains/gamma", json={"pinned": False})


# concurrency -------------------------------------------------------------------------


def test_concurrent_clients_mixing_domains_get_what_they_would_alone(server, masks):
    rnd = random.Random(0)
    work = [(rnd.choice(list(DOMAINS)), rnd.randrange(1000), rnd.randint(1, 6)) for _ in range(96)]

    def one(item):
        domain, seed, n = item
        with server.client() as c:
            r = c.get("/generate", params={"domain": domain, "seed": seed, "n": n, "format": "json"})
        assert r.status_code == 200, r.text
        return item, r.headers["x-mask-id"], json_images(r.json())

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, work))
    for (domain, seed, n), got_mask, images in results:
        assert got_mask == mask_id(masks[domain])
        assert np.array_equal(images, ref(masks[domain], seed, n)), (domain, seed, n)
    text = httpx.get(f"{server.url}/metrics").text
    single = float(re.search(r'slt_batch_domains_bucket\{le="1.0"\} (\S+)', text).group(1))
    steps = float(re.search(r"slt_batch_domains_count (\S+)", text).group(1))
    # on a CPU a step is one mask's pass, the masks taking turns (Batcher.one_mask_steps): the
    # images above are each the reference's whatever ran beside them, in other lanes' steps
    assert steps == single > 0, "a CPU step mixed masks"


# errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"domain": "alpha", "n": 0}, {"domain": "alpha", "n": 65}, {"domain": "alpha", "n": "x"},
    {"domain": "alpha", "seed": -1}, {"domain": "alpha", "seed": 2**64},
    {"domain": "alpha", "format": "gif"}, {"domain": "Not a name!"}, {"domain": ""}, {},
])
def test_bad_generate_parameters_are_422(client, masks, params):
    assert_error(client.get("/generate", params=params), 422)


def test_unknown_domain_is_404(client, masks):
    assert "unknown domain" in assert_error(client.get("/generate", params={"domain": "nope"}), 404)["detail"]


def test_domain_on_a_foreign_base_is_409_and_a_missing_mask_is_503(client, masks, redis_url):
    # a worker serving another base (or a replica of an older one) promoted its own mask: the
    # registry accepts it, this replica cannot serve it
    foreign = make_mask(0.5, 4, "foreign", base="width=0.0625,seed=1")
    r = connect(redis_url)
    RedisBlobs(r).put(foreign)
    DomainRegistry(r).promote("foreign", mask_id(foreign), by="job:elsewhere")
    body = assert_error(client.get("/generate", params={"domain": "foreign", "seed": 1}), 409)
    assert "another base" in body["detail"] and "'foreign'" in body["detail"]
    # a domain whose active mask is neither in this host's catalog nor in Redis (its blob lost)
    ghost = "e" * 64
    DomainRegistry(r).promote("ghost", ghost, by="job:elsewhere")
    resp = client.get("/generate", params={"domain": "ghost", "seed": 1})
    body = assert_error(resp, 503)
    assert ghost in body["detail"] and "neither" in body["detail"] and resp.headers["retry-after"] == "1"
    assert client.get("/generate", params={"domain": "alpha", "seed": 1}).status_code == 200


def test_readyz_is_503_until_a_first_generation_and_without_redis_or_domains(tmp_path):
    """A real server observed as it starts: its readiness probe generates 2 images, and a
    batch window longer than that (SLT_BATCH_WINDOW_MS, 2 < max_batch) keeps that first
    generation waiting for 4 s after the server answers, so /readyz is seen false honestly."""
    (tmp_path / "home").mkdir()
    with EmbeddedRedis(tmp_path / "redis") as redis_server:
        srv = LiveServer(settings_for(tmp_path / "home", redis_server.url, batch_window_ms=4000))
        srv.thread.start()
        try:
            deadline = time.monotonic() + 60
            while True:  # up: the lifespan (base built, catalog read) is done
                assert time.monotonic() < deadline and srv.thread.is_alive()
                try:
                    if httpx.get(f"{srv.url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.02)
            r = httpx.get(f"{srv.url}/readyz", timeout=5)
            body = assert_error(r, 503)
            assert body["detail"] == "not ready: no generation has succeeded yet"
            assert r.headers["retry-after"] == "1" and not srv.engine.generated_ok
            wait_ready(srv.url, 60)  # then the first generation completes
            ready = httpx.get(f"{srv.url}/readyz").json()
            assert srv.engine.generated_ok and ready["ready"] is True
            assert ready["status"] == "ready" and ready["redis"] is True and ready["domains_known"] == 0

            # Redis goes away while this replica knows no domain: it could serve nothing
            redis_server.stop()
            body = assert_error(httpx.get(f"{srv.url}/readyz", timeout=10), 503)
            assert body["detail"] == "not ready: Redis is unreachable and this replica knows no domain"
            r = httpx.get(f"{srv.url}/generate", params={"domain": "never-seen"}, timeout=30)
            body = assert_error(r, 503)
            assert "Redis" in body["detail"] and r.headers["retry-after"] == "1"
        finally:
            srv.stop()


def test_saturated_queue_is_429_with_retry_after(tmp_path, redis_url, masks):
    with LiveServer(settings_for(tmp_path, redis_url, queue_limit=4)) as srv, srv.client() as c:
        srv.engine.load_mask(mask_id(masks["alpha"]))
        with ThreadPoolExecutor(2) as pool, srv.engine.hold():
            first = pool.submit(httpx.get, f"{srv.url}/generate", timeout=60,
                                params={"domain": "alpha", "n": 3, "seed": 1})
            deadline = time.monotonic() + 10
            while srv.engine.queue_depth() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = c.get("/generate", params={"domain": "alpha", "n": 2, "seed": 2})
            body = assert_error(r, 429)
            assert int(r.headers["retry-after"]) >= 1 and "queue" in body["detail"]
        assert first.result().status_code == 200
        assert c.get("/generate", params={"domain": "alpha", "n": 2}).status_code == 200
        assert "slt_generate_rejected_total 1.0" in c.get("/metrics").text


def test_a_request_that_cannot_start_in_time_is_429_at_once(tmp_path, redis_url, masks):
    """SLT_MAX_WAIT_MS bounds the estimated wait: held work ahead that would take longer than
    the bound refuses a new request of that domain with Retry-After (answered before routing),
    while another domain, whose requests the round robin serves first, is still admitted."""
    settings = settings_for(tmp_path, redis_url, max_wait_ms=1, queue_limit=100_000)
    with LiveServer(settings) as srv, srv.client() as c:
        alpha = mask_id(masks["alpha"])
        srv.engine.load_mask(alpha)
        assert c.get("/generate", params={"domain": "alpha", "seed": 1}).status_code == 200
        batcher = srv.engine.batcher
        assert batcher.estimated_wait(1) > 0  # passes were measured
        with srv.engine.hold():
            held = srv.engine.submit(alpha, 5, 64)  # 64 images that cannot start
            assert batcher.estimated_wait(1) > 0.001
            r = c.get("/generate", params={"domain": "alpha", "n": 1, "seed": 2})
            body = assert_error(r, 429)
            assert int(r.headers["retry-after"]) == batcher.refusal(1) >= 1
            assert "would wait" in body["detail"]
            # the wait is the domain's own under round robin: another domain still gets in
            beta = mask_id(masks["beta"])
            assert batcher.images_ahead(1, beta) == 2 and batcher.images_ahead(1, alpha) == 65
            batcher.max_wait_s = batcher.estimated_wait(1, beta)  # a bound beta's 2 images fit
            assert batcher.refusal(1, beta) is None and batcher.refusal(1, alpha) is not None
            # a domain this replica does not know is the route's to resolve: a 404, not a 429
            assert_error(c.get("/generate", params={"domain": "no-such-domain"}), 404)
            assert_error(c.get("/generate", params={"domain": "alpha", "n": "two"}), 422)
        assert held.result(60).shape[0] == 64
        assert c.get("/generate", params={"domain": "alpha", "n": 2}).status_code == 200
        rejected = re.search(r"^slt_generate_rejected_total (\S+)", c.get("/metrics").text, re.M)
        assert float(rejected.group(1)) == 1.0


@pytest.mark.parametrize("leaving_path", ["/generate?domain=alpha&seed=77&n=3",
                                          "/interpolate?domain=alpha&seed=77&seed_to=79&steps=3"])
def test_a_generation_whose_client_disconnects_leaves_the_queue(server, masks, leaving_path):
    """A client that gives up while its request waits takes its images out of the queue at
    once (they no longer count in anyone's estimated wait and are never made), while a client
    that stays is answered; over raw sockets to the real server."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")

    def send(path: str) -> socket.socket:
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(f"GET {path}&format=json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        return s

    def until(depth: int) -> bool:
        deadline = time.monotonic() + 10
        while server.engine.queue_depth() != depth and time.monotonic() < deadline:
            time.sleep(0.01)
        return server.engine.queue_depth() == depth

    server.engine.load_mask(mask_id(masks["alpha"]))
    with server.engine.hold():  # nothing starts: both requests wait in the queue
        assert until(0)
        leaving, staying = send(leaving_path), send("/generate?domain=alpha&seed=78&n=2")
        assert until(5)
        leaving.close()
        assert until(2), server.engine.queue_depth()  # the departed client's 3 images are gone
    data = b""
    while chunk := staying.recv(1 << 16):
        data += chunk
    staying.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    np.testing.assert_array_equal(json_images(json.loads(body)), ref(masks["alpha"], 78, 2))


def test_admin_routes_need_the_token(server, masks):
    body = {"mask_id": mask_id(masks["alpha"])}
    with server.client() as c:
        assert_error(c.put("/domains/alpha", json=body), 401)
        assert_error(c.put("/domains/alpha", json=body, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(c.post("/masks/import", files={"file": ("m", masks["alpha"])}), 401)


def test_admin_routes_are_403_without_a_configured_token(tmp_path, redis_url, masks):
    with LiveServer(settings_for(tmp_path, redis_url, admin_token=None)) as srv, srv.client() as c:
        r = c.put("/domains/alpha", json={"mask_id": mask_id(masks["alpha"])},
                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert "SLT_ADMIN_TOKEN" in assert_error(r, 403)["detail"]


def test_put_domain_errors(admin, masks, redis_url):
    assert_error(admin.put("/domains/alpha", json={"mask_id": "0" * 64}), 404)
    assert_error(admin.put("/domains/alpha", json={"mask_id": "not-a-mask-id"}), 422)
    assert_error(admin.put("/domains/alpha", json={}), 422)
    assert_error(admin.put("/domains/alpha", json={"mask_id": mask_id(masks["alpha"]), "x": 1}), 422)
    assert_error(admin.put("/domains/alpha", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(admin.put("/domains/BAD NAME", json={"pinned": True}), 422)
    assert_error(admin.put("/domains/never-created", json={"pinned": True}), 404)
    # a mask of another base that reached Redis (made by a worker serving another base)
    foreign = make_mask(0.5, 1, "alpha", base="width=0.0625,seed=1")
    RedisBlobs(connect(redis_url)).put(foreign)
    body = assert_error(admin.put("/domains/alpha", json={"mask_id": mask_id(foreign)}), 409)
    assert "base" in body["detail"]


def test_import_verifies_the_file(admin, masks):
    foreign = make_mask(0.5, 1, "alpha", base="width=0.0625,seed=1")
    assert "base" in assert_error(admin.post("/masks/import", files={"file": ("f", foreign)}), 409)["detail"]
    other_arch = make_mask(0.5, 1, "alpha", base="width=0.125")
    assert_error(admin.post("/masks/import", files={"file": ("f", other_arch)}), 409)
    good = masks["alpha"]
    for bad, why in [(b"hello", "short"), (good[:-10], "truncated"), (b"\0" * 1000, "format"),
                     (good[:8] + b"[" + good[9:], "JSON")]:
        detail = assert_error(admin.post("/masks/import", files={"file": ("f", bad)}), 422)["detail"]
        assert detail.startswith("not a usable mask file"), (why, detail)
    assert "empty" in assert_error(admin.post("/masks/import", files={"file": ("f", b"")}), 422)["detail"]
    assert_error(admin.post("/masks/import", data={"other": "x"}, files={"nofile": ("f", good)}), 422)
    assert_error(admin.post("/masks/import", content=b"x" * 100, headers={"content-type": "text/plain"}), 422)
    big = b"\0" * ((64 << 20) + (2 << 20))
    assert_error(admin.post("/masks/import", files={"file": ("f", big)}), 413)
    r = admin.post("/masks/import", files={"file": ("again", good)})
    assert r.status_code == 200 and r.json()["mask_id"] == mask_id(good)  # already known


def test_v1_and_v2_files_of_one_mask_import_export_and_serve_alike(client, admin, masks):
    """An slt-mask/1 file (made before slt-mask/2) still imports, exports byte for byte under
    its own id and serves the pixels of the same mask in slt-mask/2."""
    from trainer.masks import FORMAT_V1, convert

    v2 = masks["beta"]
    v1 = convert(v2, FORMAT_V1)
    assert decode_mask(v1).meta["format"] == FORMAT_V1 and len(v1) > len(v2)
    r = admin.post("/masks/import", files={"file": ("old", v1)})
    assert r.status_code == 201, r.text
    assert r.json()["mask_id"] == mask_id(v1) != mask_id(v2)
    assert client.get(f"/masks/{mask_id(v1)}/file").content == v1
    assert admin.put("/domains/old-format", json={"mask_id": mask_id(v1)}).status_code == 200
    img = pixels(client.get("/generate", params={"domain": "old-format", "seed": 3, "n": 2}).content)
    assert np.array_equal(img, reference_grid(reference(v2, 3, 2)))


def with_tensor_entry(data: bytes, **changes) -> bytes:
    """The mask file with one tensor's header entry changed (and placed first, so the
    reader meets it first); the tensor data is left as it is."""
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    meta = header.pop("__metadata__")
    name = next(k for k, v in header.items() if v["dtype"] == "U8")
    entry = {**header.pop(name), **changes}
    h = json.dumps({"__metadata__": meta, name: entry, **header}).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data[8 + hlen:]


@pytest.mark.parametrize("changes", [
    {"shape": [-2, -2], "data_offsets": [0, 4]},  # -2 x -2 = 4 bytes: the sizes agree
    {"shape": "ab"},
])
def test_import_refuses_malformed_tensor_headers(admin, masks, changes):
    bad = with_tensor_entry(masks["alpha"], **changes)
    r = admin.post("/masks/import", files={"file": ("bad.safetensors", bad)})
    detail = assert_error(r, 422)["detail"]
    assert detail.startswith("not a usable mask file"), detail
    assert "shape" in detail.lower(), detail  # names the problem
    assert mask_id(bad) not in {m["mask_id"] for m in admin.get("/masks").json()}


def test_mask_routes(server, client, masks):
    a = mask_id(masks["alpha"])
    catalog = server.app.state.core.catalog  # the shared one: every replica lists the same
    # an evaluation keyed by split, as the worker and `trainer evaluate --record` write it
    # (NaN included: JSON has no NaN, so null)
    catalog.record_evaluation(a, {"heldout": {"fid": 123.5, "kid": float("nan"), "n": 16, "split": "heldout"}})
    listed = {m["mask_id"]: m for m in client.get("/masks").json()}
    assert listed[a]["evaluation"] == {"heldout": {"fid": 123.5, "kid": None, "n": 16, "split": "heldout"}}
    assert client.get(f"/masks/{a}").json()["evaluation"] == listed[a]["evaluation"]
    # a flat evaluation, as older workers wrote it, is shown under its own split (else heldout)
    b, c = mask_id(masks["beta"]), mask_id(masks["gamma"])
    catalog.record_evaluation(b, {"fid": 99.0, "n": 8, "split": "train"})
    catalog.record_evaluation(c, {"fid": 98.0, "kid": 0.25})
    assert client.get(f"/masks/{b}").json()["evaluation"] == {"train": {"fid": 99.0, "n": 8, "split": "train"}}
    assert client.get(f"/masks/{c}").json()["evaluation"] == {"heldout": {"fid": 98.0, "kid": 0.25}}
    assert listed[a]["served"] and listed[a]["k"] == 0.5 and listed[a]["base_sha256"]
    assert 0.45 < listed[a]["kept_fraction"] < 0.55
    one = client.get(f"/masks/{a}").json()
    assert one["mask_id"] == a and one["bits_per_weight"] <= 1.5
    f = client.get(f"/masks/{a}/file")
    assert f.status_code == 200 and f.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(f.content).hexdigest() == a
    assert_error(client.get(f"/masks/{'f' * 64}"), 404)
    assert_error(client.get(f"/masks/{'f' * 64}/file"), 404)
    assert_error(client.get("/masks/not-an-id"), 422)
    assert_error(client.get("/masks/ABC/file"), 422)


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.delete("/generate"), 405)


# health and metrics -------------------------------------------------------------------


def test_health_readiness_and_metrics(client, masks):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["masks_in_ram"] >= 3 and ready["torch_threads"] == 2
    client.get("/generate", params={"domain": "alpha"})
    text = client.get("/metrics").text
    for name in ('slt_generate_request_seconds_bucket{domain="alpha"', "slt_batch_images_bucket",
                 "slt_queue_images", "slt_swap_seconds_count", "slt_cache_hits_total",
                 "slt_cache_misses_total", "slt_cache_resident_bytes", 'slt_jobs{status="running"}'):
        assert name in text, name
