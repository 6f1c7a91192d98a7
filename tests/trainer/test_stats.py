"""Real moments: streaming float64 statistics against numpy, and the safetensors cache."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainer.stats import Moments, RunningMoments, compute_moments, load_moments, real_moments


def _split(n: int, sizes: list[int]) -> list[slice]:
    out, i = [], 0
    for s in sizes:
        out.append(slice(i, min(i + s, n)))
        i += s
    assert i >= n
    return out


def test_streaming_moments_equal_numpy_with_large_offset():
    rng = np.random.default_rng(0)
    n = 1000
    # two "layers"; a mean offset of 1e6 over unit spread: x^2 ~ 1e12, where naive float64
    # sum-of-squares loses ~4 significant digits of the variance
    a = rng.normal(size=(n, 3, 4, 5)) * rng.uniform(0.5, 2.0, size=(3, 4, 5)) + 1e6
    b = rng.normal(size=(n, 7)) * 1e-3 - 3e4
    rm = RunningMoments()
    for s in _split(n, [1, 2, 63, 64, 7, 300, 13, 550]):  # uneven, including single-sample batches
        rm.update([torch.from_numpy(a[s]), torch.from_numpy(b[s])])
    m = rm.result()
    assert m.n == n and len(m.mean) == 2
    for got_mu, got_var, ref in zip(m.mean, m.var, (a.reshape(n, -1), b), strict=True):
        assert got_mu.dtype == torch.float64 and got_mu.shape == (ref.shape[1],)
        np.testing.assert_allclose(got_mu.numpy(), ref.mean(0), rtol=1e-10, atol=0)
        np.testing.assert_allclose(got_var.numpy(), ref.var(0), rtol=1e-10, atol=0)
    # the offset is large enough that the textbook formula fails the same tolerance
    ref = a.reshape(n, -1)
    naive = (ref**2).sum(0) / n - (ref.sum(0) / n) ** 2
    assert np.abs(naive / ref.var(0) - 1).max() > 1e-6


def test_streaming_moments_float32_features():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(257, 50)) * 3 + 100).astype(np.float32)
    rm = RunningMoments()
    for s in _split(257, [64, 64, 64, 64, 1]):
        rm.update([torch.from_numpy(x[s])])
    m = rm.result()
    ref = x.astype(np.float64)  # accumulate in float64 whatever the features' dtype
    np.testing.assert_allclose(m.mean[0].numpy(), ref.mean(0), rtol=1e-10, atol=0)
    np.testing.assert_allclose(m.var[0].numpy(), ref.var(0), rtol=1e-10, atol=0)


def test_empty_moments_raise():
    with pytest.raises(ValueError, match="empty"):
        RunningMoments().result()


class TinyExtractor(nn.Module):
    """Two conv "layers" with a name and key like FeatureExtractor; counts its calls."""

    name, key = "tiny", "tiny-000000000000-t1"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, stride=2, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h1 = torch.relu(self.c1(x))
        return [h1, torch.relu(self.c2(h1))]


class FakeDataset:
    """The dataset interface real_moments needs: dataset_sha256, indices, batches."""

    def __init__(self, n: int = 37, seed: int = 0):
        self.x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.dataset_sha256 = hashlib.sha256(f"fake-{seed}".encode()).hexdigest()

    def indices(self, split: str = "train") -> list[int]:
        return list(range(len(self.x)))

    def batches(self, batch_size: int, split: str = "train"):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size]


def _reference(ds: FakeDataset, ext: nn.Module) -> list[np.ndarray]:
    with torch.no_grad():
        return [f.reshape(len(ds.x), -1).double().numpy() for f in ext(ds.x)]


def test_real_moments_match_full_pass_and_cache(tmp_path):
    ds, ext = FakeDataset(), TinyExtractor()
    m = real_moments(ds, ext, batch_size=10, cache_dir=tmp_path)
    assert ext.calls == 4 and m.n == 37
    for mu, var, ref in zip(m.mean, m.var, _reference(ds, ext), strict=True):
        np.testing.assert_allclose(mu.numpy(), ref.mean(0), rtol=1e-6, atol=1e-9)  # float32 features
        np.testing.assert_allclose(var.numpy(), ref.var(0), rtol=1e-5, atol=1e-9)
    files = list((tmp_path / "moments").glob("*.safetensors"))
    assert len(files) == 1 and files[0].name.startswith(ds.dataset_sha256[:16] + "-" + ext.key)
    _, md = load_moments(files[0])
    assert md["n"] == "37" and md["extractor"] == ext.key
    # cache hit: identical tensors, extractor not called
    ext.calls = 0
    m2 = real_moments(ds, ext, batch_size=10, cache_dir=tmp_path)
    assert ext.calls == 0 and m2.n == m.n
    assert all(torch.equal(a, b) for a, b in zip(m.mean + m.var, m2.mean + m2.var, strict=True))
    # another dataset hash is another entry
    real_moments(FakeDataset(seed=1), ext, batch_size=10, cache_dir=tmp_path)
    assert ext.calls == 4 and len(list((tmp_path / "moments").glob("*.safetensors"))) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_cache_is_recomputed(tmp_path, damage):
    ds, ext = FakeDataset(), TinyExtractor()
    m = real_moments(ds, ext, batch_size=16, cache_dir=tmp_path)
    (path,) = (tmp_path / "moments").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "flip":  # still parses: only the payload checksum can tell
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\x00" * 64)
    path.write_bytes(bytes(data))
    ext.calls = 0
    m2 = real_moments(ds, ext, batch_size=16, cache_dir=tmp_path)
    assert ext.calls == 3
    assert all(torch.equal(a, b) for a, b in zip(m.mean + m.var, m2.mean + m2.var, strict=True))
    load_moments(path)  # rewritten, valid


def test_compute_moments_with_random_vgg():
    from trainer.features import load_extractor

    ext = load_extractor("random")
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    m = compute_moments([x[:3], x[3:]], ext)
    assert isinstance(m, Moments) and m.n == 5 and len(m.mean) == 13
    assert sum(t.numel() for t in m.mean) == 1_105_920  # C*H*W over the 13 VGG16 ReLUs at 64x64
    assert all(t.dtype == torch.float64 and t.device.type == "cpu" for t in m.mean + m.var)
    assert all((v >= 0).all() for v in m.var)
