"""Shared fixtures: real emoji image folders (downloaded once, cached across runs) and a fresh SLT_HOME."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.data.demo import install_demo_dataset
from trainer.settings import get_settings


def _test_cache() -> Path:
    return Path(os.environ.get("SLT_TEST_CACHE") or Path.home() / ".cache" / "slt-tests").expanduser()


@pytest.fixture(scope="session")
def emoji_google_dir() -> Path:
    """A folder of ~3,800 real 64x64 RGBA emoji PNGs (Google), installed once into the test cache."""
    return install_demo_dataset("emoji-google", _test_cache() / "datasets")


@pytest.fixture(scope="session")
def emoji_twitter_dir() -> Path:
    """A folder of ~3,800 real 64x64 RGBA emoji PNGs (Twitter), installed once into the test cache."""
    return install_demo_dataset("emoji-twitter", _test_cache() / "datasets")


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty SLT_HOME for one test; the cached settings are reset before and after."""
    home = tmp_path / "slt-home"
    home.mkdir()
    monkeypatch.setenv("SLT_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
