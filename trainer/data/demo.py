"""Demo domains: real 64x64 emoji PNGs from the npm packages emoji-datasource-<vendor>, via `npm pack`."""
from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

VERSION = "16.0.0"
DEMOS = {"emoji-google": "google", "emoji-twitter": "twitter"}  # dataset name -> vendor
MANIFEST = "manifest.json"  # not an image, so the folder loader ignores it


def _npm(*args: str, cwd: Path) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH: install Node.js/npm to fetch the demo datasets")
    proc = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _sri_sha512(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def _read_manifest(target: Path) -> dict | None:
    try:
        m = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = m.get("complete") and m.get("version") == VERSION
    # a folder someone pruned by hand is reinstalled, not trusted
    return m if ok and m.get("count") == sum(1 for _ in target.glob("*.png")) else None


def _fetch_verified(pkg: str, tmp: Path) -> tuple[Path, str]:
    """`npm pack` the package into tmp; return the tarball and its sha512 integrity after checking it."""
    spec = f"{pkg}@{VERSION}"
    info = json.loads(_npm("pack", "--json", spec, cwd=tmp))[0]
    tarball, integrity = tmp / info["filename"], info["integrity"]
    actual = _sri_sha512(tarball)
    if actual != integrity:
        raise RuntimeError(f"{tarball.name}: sha512 mismatch with npm pack ({actual} != {integrity})")
    # The registry's published integrity is an independent check of what npm handed us;
    # offline (npm cache only) `npm view` may fail, then npm pack's own check stands.
    try:
        published = _npm("view", spec, "dist.integrity", cwd=tmp).strip()
    except RuntimeError as e:
        log.warning("could not read the published integrity of %s (%s); relying on npm pack's", spec, e)
    else:
        if published and published != actual:
            raise RuntimeError(f"{tarball.name}: sha512 differs from the published one ({actual} != {published})")
    return tarball, actual


def install_demo_dataset(name: str, datasets_dir: Path) -> Path:
    """Install demo dataset `name` (emoji-google | emoji-twitter) under datasets_dir; idempotent, atomic."""
    if name not in DEMOS:
        raise ValueError(f"unknown demo dataset {name!r}; choose from {sorted(DEMOS)}")
    vendor, pkg = DEMOS[name], f"emoji-datasource-{DEMOS[name]}"
    datasets_dir = Path(datasets_dir)
    datasets_dir.mkdir(parents=True, exist_ok=True)
    target = datasets_dir / name
    if _read_manifest(target):
        return target
    # flock on the folder itself serialises concurrent installers (two test sessions, make run +
    # make data) and leaves no lock file to be mistaken for a dataset.
    lock = os.open(datasets_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_manifest(target):
            return target
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=datasets_dir) as tmp:
            tmp = Path(tmp)
            tarball, integrity = _fetch_verified(pkg, tmp)
            stage = tmp / name
            stage.mkdir()
            pattern = re.compile(rf"^package/img/{vendor}/64/([^/]+\.png)$")
            count = 0
            with tarfile.open(tarball, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.isfile() and pattern.match(m.name)]
                for m in tqdm(members, desc=name, unit="img", leave=False):
                    fname = pattern.match(m.name).group(1)
                    with tar.extractfile(m) as src, open(stage / fname, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    count += 1
            if count == 0:
                raise RuntimeError(f"{tarball.name}: no files under package/img/{vendor}/64/")
            manifest = {"name": name, "package": pkg, "version": VERSION, "count": count,
                        "tarball_integrity": integrity, "complete": True}
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if target.exists():  # a partial or older install: replace it whole
                shutil.rmtree(target)
            os.replace(stage, target)
        log.info("installed %s: %d images in %.1f s -> %s", name, count, time.time() - t0, target)
    finally:
        os.close(lock)  # releases the flock
    return target


def main(argv: list[str] | None = None) -> None:
    """CLI: install every demo dataset into $SLT_HOME/datasets (or --home DIR)."""
    ap = argparse.ArgumentParser(description="Fetch the demo datasets (emoji PNGs) with npm pack.")
    ap.add_argument("--home", type=Path, default=None, help="SLT_HOME (default: $SLT_HOME or ./var)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from trainer.settings import get_settings

    datasets_dir = (args.home.expanduser().resolve() / "datasets") if args.home else get_settings().datasets_dir
    for name in DEMOS:
        t0 = time.time()
        try:
            path = install_demo_dataset(name, datasets_dir)
        except (RuntimeError, OSError) as e:
            log.error("could not install %s: %s", name, e)
            sys.exit(1)
        count = json.loads((path / MANIFEST).read_text())["count"]
        log.info("%s: %d images at %s (%.1f s)", name, count, path, time.time() - t0)


if __name__ == "__main__":
    main()
