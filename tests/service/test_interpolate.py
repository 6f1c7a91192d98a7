"""GET /interpolate through real HTTP (the API under uvicorn, a real redis-server): a strip of
images along the slerp path between two seeds' latents, deterministic, equal to the trainer's
own forward pass of those latents, its ends equal to /generate's images."""
from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
import torch
from live_server import TINY, LiveServer, make_mask, pixels, settings_for
from PIL import Image

from service.routers.generate import interpolation_latents, slerp
from service.settings import parse_base
from trainer.masks import decode_mask
from trainer.ticket import build_ticket, forward_images, grid, to_uint8

NZ = parse_base(TINY).nz


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    with LiveServer(settings_for(tmp_path_factory.mktemp("home"), redis_url, max_n=16)) as srv:
        data = make_mask(0.5, 4, "lerp")
        with srv.client(admin=True) as c:
            assert c.post("/masks/import", files={"file": ("m.safetensors", data)}).status_code in (200, 201)
            r = c.put("/domains/lerp", json={"mask_id": hashlib.sha256(data).hexdigest()})
            assert r.status_code == 200, r.text
        srv.mask = data
        yield srv


def reference_strip(data: bytes, seed: int, seed_to: int, index: int, steps: int) -> np.ndarray:
    """The trainer's ticket (base x mask, eval BN) run on the interpolated latents, on one
    thread, as the service documents its arithmetic (service/engine.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = build_ticket(decode_mask(data), spec=parse_base(TINY))
        z = torch.from_numpy(interpolation_latents(seed, seed_to, index, steps, g.nz))
        return to_uint8(forward_images(g, z))
    finally:
        torch.set_num_threads(old)


def test_slerp_keeps_gaussian_latents_on_their_shell_and_ends_exactly():
    a, b = (np.random.default_rng(s).standard_normal(100) for s in (1, 2))
    t = np.linspace(0, 1, 9)
    path = slerp(a, b, t)
    assert np.array_equal(path[0], a) and np.array_equal(path[-1], b)
    norms = np.linalg.norm(path, axis=1)
    ends = (np.linalg.norm(a) + np.linalg.norm(b)) / 2
    assert np.all(np.abs(norms / ends - 1) < 0.1), norms  # a straight line sags to ~0.7 halfway
    assert np.linalg.norm((a + b) / 2) / ends < 0.8


def test_strip_is_deterministic_and_the_trainers_pixels(server):
    params = {"domain": "lerp", "seed": 3, "seed_to": 11, "steps": 6, "index": 2}
    with server.client() as c:
        r1, r2 = c.get("/interpolate", params=params), c.get("/interpolate", params=params)
        assert r1.status_code == 200 and r1.headers["content-type"] == "image/png", r1.text
        assert r1.content == r2.content  # the same query, the same bytes
        ref = reference_strip(server.mask, 3, 11, 2, 6)
        assert np.array_equal(pixels(r1.content), np.asarray(grid(ref, nrow=6)))
        assert pixels(r1.content).shape == (64 + 4, 6 * 66 + 2, 3)  # one row
        text = Image.open(io.BytesIO(r1.content)).text
        assert text == {"domain": "lerp", "mask_id": hashlib.sha256(server.mask).hexdigest(),
                        "base_sha256": r1.headers["x-base-sha256"], "seed": "3", "seed_to": "11",
                        "index": "2", "steps": "6", "interpolation": "slerp"}

        # json: one PNG per step; the ends are /generate's image `index` at each seed
        rj = c.get("/interpolate", params={**params, "format": "json"})
        body = rj.json()
        strip = np.stack([pixels(base64.b64decode(s)) for s in body["images"]])
        assert np.array_equal(strip, ref)
        assert body["provenance"]["t"] == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        assert body["provenance"]["method"] == "slerp" and body["provenance"]["seed_to"] == 11
        for seed, end in ((3, strip[0]), (11, strip[-1])):
            g = c.get("/generate", params={"domain": "lerp", "seed": seed, "n": 3, "format": "json"})
            assert np.array_equal(pixels(base64.b64decode(g.json()["images"][2])), end)

        webp = c.get("/interpolate", params={**params, "format": "webp"})
        assert webp.headers["content-type"] == "image/webp"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(webp.content)).convert("RGB")),
                              pixels(r1.content))


@pytest.mark.parametrize("params, code", [
    ({"seed": 1, "seed_to": 2, "steps": 1}, 422),  # a strip has two ends
    ({"seed": 1, "seed_to": 2, "steps": 17}, 422),  # over SLT_MAX_N (16 here)
    ({"seed": 1, "seed_to": 2, "steps": 65}, 422),  # over the schema's ceiling
    ({"seed": 1}, 422),  # seed_to missing
    ({"seed": -1, "seed_to": 2}, 422),
    ({"seed": 1, "seed_to": 2, "index": 4096}, 422),
    ({"seed": 1, "seed_to": 2, "format": "gif"}, 422),
    ({"seed": 1, "seed_to": 2, "domain": "nowhere"}, 404),
])
def test_interpolate_refuses_bad_input(server, params, code):
    with server.client() as c:
        r = c.get("/interpolate", params={"domain": "lerp", **params})
    assert r.status_code == code, r.text
    assert isinstance(r.json()["detail"], str)


def test_interpolate_is_in_the_openapi_document(server):
    with server.client() as c:
        op = c.get("/openapi.json").json()["paths"]["/interpolate"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"domain", "seed", "seed_to", "steps", "index", "format"}
    assert params["steps"]["schema"]["minimum"] == 2 and params["steps"]["schema"]["maximum"] == 16  # SLT_MAX_N
    assert "image/png" in op["responses"]["200"]["content"]
    assert set(op["responses"]) >= {"404", "422", "429", "503"}
