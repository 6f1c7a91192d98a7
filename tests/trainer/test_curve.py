"""`python -m trainer curve`: a search with periodic KID/FID, written as JSON, mask, grid and
curves, accumulating runs in one study folder."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image
from slt_stack import copy_images

from trainer.masks import decode_mask

ROOT = Path(__file__).resolve().parents[2]


def run_curve(dataset: Path, out: Path, label: str, home: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "trainer", "curve", "--dataset", str(dataset), "--out", str(out),
           "--label", label, "--width", "0.0625", "--preset", "demo", "--features", "random",
           "--iterations", "4", "--batch-size", "2", "--bn-batches", "2", "--eval-every", "2",
           "--eval-n", "12", "--device", "cpu", *extra]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "SLT_HOME": str(home)},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_curve_records_kid_fid_and_loss_against_iterations_and_seconds(emoji_google_dir, tmp_path):
    data = copy_images(emoji_google_dir, tmp_path / "emoji", n=40)
    out, home = tmp_path / "study", tmp_path / "home"
    printed = run_curve(data, out, "a", home)
    rec = json.loads((out / "a.json").read_text())
    assert printed["points"] == rec["points"]
    assert [p["iteration"] for p in rec["points"]] == [2, 4]
    secs = [p["seconds"] for p in rec["points"]]
    assert 0 < secs[0] <= secs[1]
    for p in [rec["random_mask"], *rec["points"]]:
        assert all(math.isfinite(p[k]) for k in ("kid", "fid", "precision", "recall")), p
        assert p["fid"] > 0
    assert rec["config"]["iterations"] == 4 and rec["config"]["features"] == "random"
    assert rec["base"]["width"] == 0.0625 and rec["eval_n"] == 12 and rec["real_n"] == 40
    assert [x[0] for x in rec["loss"]] == [1, 2, 3, 4]
    mask = (out / "a.safetensors").read_bytes()
    assert hashlib.sha256(mask).hexdigest() == rec["mask_id"]
    assert decode_mask(mask).meta["iterations"] == "4"
    w, h = Image.open(out / "a-grid.png").size  # 64 images, 8 per row
    assert w == h and w >= 8 * 64

    # a second run joins the same study: its JSON beside the first, the plot redrawn
    before = (out / "curves.png").stat().st_mtime_ns
    run_curve(data, out, "b", home, "--k", "0.3")
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json"]
    assert (out / "curves.png").stat().st_mtime_ns > before
    assert Image.open(out / "curves.png").format == "PNG"
