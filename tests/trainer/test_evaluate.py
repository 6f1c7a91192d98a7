"""The evaluation protocol end to end: CLI JSON, split, cache, determinism, folders of images."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import open_dataset
from trainer.evaluate import _real_indices, evaluate_mask, real_features
from trainer.generator import BaseSpec
from trainer.masks import MaskCatalog, decode_mask
from trainer.metrics.embed import load_eval_embedder
from trainer.search import SearchConfig, random_mask
from trainer.settings import TrainerSettings

KEYS = {"fid", "kid", "precision", "recall", "density", "coverage", "features", "n", "split"}


@pytest.fixture(scope="module")
def fid_home() -> Path:
    """The persistent test home whose cache holds the FID Inception weights (fetched once)."""
    home = Path(os.environ.get("SLT_TEST_CACHE") or Path.home() / ".cache" / "slt-tests") / "slt-home"
    from trainer.metrics.inception import load_inception_state
    load_inception_state(TrainerSettings(home=home))
    return home


@pytest.fixture(scope="module")
def emoji40(emoji_google_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("emoji40")
    for p in sorted(emoji_google_dir.glob("*.png"))[:40]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def mask_bytes() -> bytes:
    return random_mask(BaseSpec(width=0.125), SearchConfig(k=0.1, seed=0, bn_batches=2), "0" * 64)


def test_real_sample_is_fixed_and_within_split(emoji40, tmp_path):
    ds = open_dataset(emoji40, cache_dir=tmp_path)
    a = _real_indices(ds, "train", 10)
    assert a == _real_indices(ds, "train", 10) and len(a) == 10
    assert set(a) <= set(ds.indices("train"))
    assert _real_indices(ds, "all", 1000) == ds.indices("all")
    with pytest.raises(ValueError, match="split"):
        _real_indices(ds, "test", 10)


@pytest.mark.slow
def test_evaluate_mask_deterministic_and_cached(fid_home, emoji40, mask_bytes, tmp_path, tmp_home):
    s = TrainerSettings(home=fid_home)
    emb = load_eval_embedder("inception", "cpu", s)
    assert emb.name == "inception-fid" and emb.comparable
    ds = open_dataset(emoji40, cache_dir=tmp_path)
    mask = decode_mask(mask_bytes)
    r1 = evaluate_mask(mask, ds, n=12, split="all", embedder=emb)
    cached = list((tmp_home / "cache").glob("eval/*.npy"))  # real side cached under SLT_HOME
    assert KEYS <= set(r1) and r1["n"] == 12 and r1["features"] == "inception-fid"
    r2 = evaluate_mask(mask, ds, n=12, split="all", embedder=emb)
    assert r1 == r2
    feats = real_features(ds, "all", 12, emb)
    assert feats.shape == (12, 2048) and feats.dtype == np.float64 and cached
    # a random mask is far from real emoji: FID large, precision low
    assert r1["fid"] > 100 and r1["precision"] <= 0.5


@pytest.mark.slow
def test_cli_evaluate_json_for_mask_and_images(fid_home, emoji40, mask_bytes, tmp_path):
    home = tmp_path / "home"
    cat = MaskCatalog(home / "masks")
    mid = cat.add(mask_bytes)
    env = {"SLT_HOME": str(home), "PATH": os.environ["PATH"],
           "SLT_INCEPTION_WEIGHTS": str(fid_home / "cache" / "weights" / "inception-fid.safetensors")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "trainer", "evaluate", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, cwd=Path(__file__).parents[2])
    r = run("--mask", str(cat.path(mid)), "--dataset", str(emoji40), "--n", "8", "--split", "all", "--record")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert KEYS <= set(out) and out["n"] == 8 and out["split"] == "all" and out["mask_id"] == mid
    assert cat.info(mid)["evaluation"]["all"]["fid"] == pytest.approx(out["fid"])
    # a folder of the real images themselves scores near-perfect against them
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in sorted(emoji40.glob("*.png"))[:8]:
        Image.open(p).save(imgs / p.name)
    r = run("--images", str(imgs), "--dataset", str(imgs), "--n", "8", "--split", "all")
    assert r.returncode == 0, r.stderr
    same = json.loads(r.stdout)
    assert abs(same["fid"]) < 1e-3 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert out["fid"] > 100 * max(same["fid"], 1e-3)
