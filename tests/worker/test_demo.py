"""SLT_DEMO on a first start: shipped masks serve the demo domains at once when they fit the
served base, and one demo search per dataset is queued (on a real redis-server)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from store.connection import EmbeddedRedis, connect
from store.settings import SharedSettings, parse_base
from trainer.data import open_dataset
from trainer.evaluate import generated_images, real_features
from trainer.generator import BaseSpec, base_sha256, build_base
from trainer.masks import decode_mask
from trainer.metrics import compute_metrics
from trainer.metrics.embed import load_eval_embedder
from trainer.search import config_from, random_mask
from trainer.ticket import build_ticket
from worker.app import producer
from worker.demo import DEMO_DATASETS, SHIPPED, queue_demo_jobs, seed_shipped_masks
from worker.runner import Context

ROOT = Path(__file__).resolve().parents[2]


def default_base() -> str:
    """What `make run` and compose serve when SLT_BASE is unset (both must agree)."""
    found = {re.search(r"SLT_BASE-([^}]*)}", (ROOT / f).read_text()).group(1)
             for f in ("Makefile", "docker-compose.yml")}
    assert len(found) == 1, found
    return found.pop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def ctx(redis_url, tmp_path: Path) -> Context:
    settings = SharedSettings(home=tmp_path / "home", base="width=0.0625", search_features="random")
    connect(redis_url).flushdb()
    for name in DEMO_DATASETS:
        settings.dataset_path(name).mkdir(parents=True)
    return Context.for_app(producer(redis_url), settings)


def test_shipped_mask_serves_its_domain_once_and_a_foreign_one_is_skipped(ctx, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    ours = random_mask(BaseSpec(width=0.0625), config_from("demo"), "0" * 64, domain="emoji-google")
    foreign = random_mask(BaseSpec(width=0.125), config_from("demo"), "0" * 64, domain="emoji-twitter")
    (shipped / "emoji-google.safetensors").write_bytes(ours)
    (shipped / "emoji-twitter.safetensors").write_bytes(foreign)

    assert seed_shipped_masks(ctx, shipped) == ["emoji-google"]
    mask_id = hashlib.sha256(ours).hexdigest()
    d = ctx.domains.get("emoji-google")
    assert d["mask_id"] == mask_id and d["history"][0]["by"] == "shipped"
    assert ctx.catalog.bytes(mask_id) == ours and ctx.blobs.get(mask_id) == ours
    assert mask_id in ctx.catalog and ctx.catalog.entry(mask_id)["info"]["domain"] == "emoji-google"
    assert ctx.domains.get("emoji-twitter") is None  # another base: never served
    assert seed_shipped_masks(ctx, shipped) == []  # a second start changes nothing

    # the demo searches: the shipped domain keeps its mask, the empty one takes its search's
    jobs = {ctx.store.get(j)["domain"]: ctx.store.get(j) for j in queue_demo_jobs(ctx)}
    assert set(jobs) == set(DEMO_DATASETS)
    assert jobs["emoji-google"]["promote"] is False and jobs["emoji-twitter"]["promote"] is True
    assert jobs["emoji-google"]["preset"] == "demo"
    assert queue_demo_jobs(ctx) == []  # remembered in Redis


def test_a_removed_domain_is_not_seeded_again(ctx, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    data = random_mask(BaseSpec(width=0.0625), config_from("demo"), "0" * 64)
    (shipped / "emoji-google.safetensors").write_bytes(data)
    assert seed_shipped_masks(ctx, shipped) == ["emoji-google"]
    ctx.client.delete("slt:domain:emoji-google")  # as if the domain had been removed
    assert seed_shipped_masks(ctx, shipped) == []


@pytest.mark.parametrize("name", DEMO_DATASETS)
def test_a_shipped_mask_fits_the_make_run_base_and_records_its_margin(name):
    data = (SHIPPED / f"{name}.safetensors").read_bytes()
    assert len(data) <= 1_500_000
    mask = decode_mask(data)
    spec = parse_base(default_base())
    assert mask.base_sha256 == base_sha256(build_base(spec))
    assert mask.meta["domain"] == name
    recorded = mask.info()["metrics"]
    assert recorded["kid"] <= 0.35 * recorded["random_mask_kid"], recorded


@pytest.mark.slow
def test_a_shipped_mask_measured_again_beats_a_random_mask(request, tmp_home):
    """Both shipped files come from the same search and evaluation code: measuring one again on
    Inception (about 2.5 min on 2 cores) checks that code's record."""
    name = DEMO_DATASETS[0]
    mask = decode_mask((SHIPPED / f"{name}.safetensors").read_bytes())
    spec = parse_base(default_base())
    recorded = mask.info()["metrics"]

    # measured again, smaller (256 generated vs 320 real), on the standard FID Inception
    ds = open_dataset(request.getfixturevalue(f"emoji_{name.split('-')[1]}_dir"))
    emb = load_eval_embedder("inception", "cpu")
    assert emb.comparable
    real = real_features(ds, "all", 320, emb)

    def kid(m) -> float:
        fake = emb(generated_images(build_ticket(m, "cpu"), 256, 0, "cpu"), batch_size=50)
        return compute_metrics(fake, real, kid_subset_size=256, kid_subsets=50)["kid"]

    shipped = kid(mask)
    rand = kid(decode_mask(random_mask(spec, config_from("demo"), ds.dataset_sha256)))
    assert shipped <= 0.5 * rand, (shipped, rand)
    assert abs(shipped - recorded["kid"]) < 0.03, (shipped, recorded["kid"])
