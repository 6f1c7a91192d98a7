"""`make test` and `make bench` on a machine without their system packages and without a way
to install them (no apt-get): scripts/prereqs.sh stops with one message naming the exact
command, before the venv or anything else is made. The executables are named missing through
SLT_CHROMIUM / SLT_WRK, apt-get is kept off PATH (a folder holding only bash, id and make)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bare_path(tmp_path) -> str:
    """A PATH with only what the script and make need: no apt-get, no sudo, no wrk."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "make", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


@pytest.mark.parametrize("target, override, package", [
    ("test", {"SLT_CHROMIUM": "/nonexistent/chromium"}, "chromium wrk"),
    ("bench", {"SLT_WRK": "wrk-not-here"}, "wrk"),
    ("bench-quick", {"SLT_WRK": "wrk-not-here"}, "wrk"),
])
def test_make_stops_first_naming_the_command_when_a_package_is_missing(
        target, override, package, bare_path, tmp_path):
    venv = tmp_path / "venv"
    env = {"PATH": bare_path, "HOME": str(tmp_path), "SLT_HOME": str(tmp_path / "home"), **override}
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"apt-get install -y {package}" in r.stderr, r.stderr
    assert "no apt-get" in r.stderr
    # nothing ran before the check: no venv, no SLT_HOME, no pip
    assert not venv.exists() and not (tmp_path / "home").exists()
    assert "pip" not in r.stdout


def test_the_check_passes_where_the_executable_is_there(bare_path, tmp_path):
    for name in ("chromium", "wrk"):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    r = subprocess.run([str(ROOT / "scripts" / "prereqs.sh"), "test"], capture_output=True, text=True,
                       env={"PATH": bare_path, "SLT_CHROMIUM": str(tmp_path / "chromium"),
                            "SLT_WRK": str(tmp_path / "wrk")}, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_make_test_runs_the_check_before_the_install():
    r = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "test"],
                       capture_output=True, text=True, check=True, env={**os.environ})
    lines = r.stdout.splitlines()
    assert lines[0] == "scripts/prereqs.sh test", lines[:3]
