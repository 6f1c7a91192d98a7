"""SLT_DEMO on a first start: shipped masks serve the demo domains at once when they fit the
served base, and one demo search per dataset is queued (on a real redis-server)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog
from trainer.search import config_from, random_mask
from worker.app import producer
from worker.broker import EmbeddedRedis, connect
from worker.demo import DEMO_DATASETS, queue_demo_jobs, seed_shipped_masks
from worker.domains import DomainRegistry, MaskBlobs
from worker.jobs import JobStore
from worker.runner import Context
from worker.settings import WorkerSettings

MAKE_RUN_BASE = "width=0.25"  # what `make run` serves when SLT_BASE is unset (service/launcher.py)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def ctx(redis_url, tmp_path: Path) -> Context:
    settings = WorkerSettings(home=tmp_path / "home", base="width=0.0625", search_features="random")
    client = connect(redis_url)
    client.flushdb()
    for name in DEMO_DATASETS:
        settings.dataset_path(name).mkdir(parents=True)
    return Context(producer(redis_url), settings, client, JobStore(client),
                   MaskCatalog(settings.masks_dir), MaskBlobs(client), DomainRegistry(client), "test:1")


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
    assert ctx.domains.get("emoji-twitter") is None  # another base: never served
    assert seed_shipped_masks(ctx, shipped) == []  # a second start changes nothing

    # the demo searches: the shipped domain keeps its mask, the empty one takes its search's
    jobs = {ctx.store.get(j)["domain"]: ctx.store.get(j) for j in queue_demo_jobs(ctx)}
    assert set(jobs) == set(DEMO_DATASETS)
    assert jobs["emoji-google"]["promote"] is False and jobs["emoji-twitter"]["promote"] is True
    assert jobs["emoji-google"]["preset"] == "demo"
    assert queue_demo_jobs(ctx) == []  # remembered in Redis


def test_a_rolled_back_domain_is_not_seeded_again(ctx, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    data = random_mask(BaseSpec(width=0.0625), config_from("demo"), "0" * 64)
    (shipped / "emoji-google.safetensors").write_bytes(data)
    assert seed_shipped_masks(ctx, shipped) == ["emoji-google"]
    ctx.client.delete("slt:domain:emoji-google")  # as if the domain had been removed
    assert seed_shipped_masks(ctx, shipped) == []
