"""What the compose deployment passes to its containers, checked against the settings themselves:
every field of the API's settings (which extend the workers' shared ones) and every variable the
trainer reads must reach both the api and the worker container, so a setting added later that
compose does not forward fails here rather than being silently ignored in production."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("api", "worker")


def settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.add((alias or f"{prefix}{name}").upper())
    return names


def trainer_env_names() -> set[str]:
    """The trainer's settings read SLT_* names from the environment in trainer/settings.py
    (however that file builds its settings object): every name it mentions."""
    return set(re.findall(r"\bSLT_[A-Z0-9_]+\b", (ROOT / "trainer" / "settings.py").read_text()))


def every_setting() -> set[str]:
    return settings_env_names() | trainer_env_names()


def compose_environment(*files: str) -> dict[str, dict]:
    """service -> its `environment` mapping, the files merged as `docker compose -f ... -f`."""
    merged: dict[str, dict] = {}
    for f in files:
        doc = yaml.safe_load((ROOT / f).read_text())  # resolves the &app-env anchor
        for service, spec in (doc.get("services") or {}).items():
            env = spec.get("environment") or {}
            if isinstance(env, list):  # the `- NAME=value` form
                env = dict(item.partition("=")[::2] for item in env)
            merged.setdefault(service, {}).update(env)
    return merged


def documented_settings() -> set[str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    table = text[text.index("## Configuration reference"):text.index("## Scaling")]
    return set(re.findall(r"`(SLT_[A-Z0-9_]+)`", table))


@pytest.mark.parametrize("files", [("docker-compose.yml",),
                                   ("docker-compose.yml", "docker-compose.gpu.yml")])
def test_compose_forwards_every_setting_to_api_and_worker(files):
    """OPERATIONS.md promises that every setting set in .env reaches the containers: each one
    is in its reference table, and compose forwards each one."""
    # a sanity check of the two sources, not the list: the test iterates whatever they hold
    assert {"SLT_HOME", "SLT_REDIS_URL", "SLT_LEASE_S", "SLT_VGG19_WEIGHTS"} <= every_setting()
    undocumented = sorted(every_setting() - documented_settings())
    assert not undocumented, f"docs/OPERATIONS.md's configuration reference lacks {undocumented}"
    env = compose_environment(*files)
    for service in APP_SERVICES:
        missing = sorted(every_setting() - set(env[service]))
        assert not missing, f"{' + '.join(files)}: {service} never receives {missing}"


def test_compose_forwards_the_s3_credentials():
    # SLT_S3_BUCKET alone cannot work: boto3 reads its credentials and region from these
    env = compose_environment("docker-compose.yml")
    for service in APP_SERVICES:
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env[service])


def test_the_image_and_the_wheelhouse_carry_boto3():
    # what the Dockerfile and docker/build-wheelhouse.sh install: this script's default output
    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"),
                          "--pyproject", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert any(re.match(r"boto3\b", r) for r in out), out
    assert not any(re.match(r"torch\b", r) for r in out)  # installed first, on its own
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"python3 requirements\.py >requirements\.txt", dockerfile)  # no --extras ""
    wheelhouse = (ROOT / "docker" / "build-wheelhouse.sh").read_text()
    assert 'docker/requirements.py ${EXTRAS+--extras "$EXTRAS"}' in wheelhouse


def test_the_build_context_holds_every_package_the_image_copies():
    """The image copies each package of pyproject.toml, and .dockerignore (a whitelist) lets
    each into the build context: a package left out of either fails the image build."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) /opt/slt/app/\1$", dockerfile, re.M))
    assert packages <= copied, f"the Dockerfile never copies {sorted(packages - copied)}"
    allowed = {line.strip()[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip().startswith("!")}
    assert copied <= allowed, f".dockerignore keeps {sorted(copied - allowed)} out of the build context"
