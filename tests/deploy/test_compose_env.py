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


# ---- the configuration reference's defaults (issue 24) --------------------------------------

def settings_defaults() -> dict[str, object]:
    """Environment name -> the default the code has (the whole settings chain)."""
    prefix = Settings.model_config.get("env_prefix", "")
    out = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        out[(alias or f"{prefix}{name}").upper()] = field.get_default(call_default_factory=True)
    return out


def reference_rows() -> dict[str, str]:
    """Each `SLT_*` variable of OPERATIONS.md's settings table -> the text its default cell
    documents for it: a row naming several variables (`SLT_HOST`, `SLT_PORT`) gives each the
    item at its place in the cell's comma-separated list, read up to the first `;`."""
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    section = text[text.index("## Configuration reference"):text.index("## Scaling")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(SLT_[A-Z0-9_]+)`", cells[0]) if line.startswith("| `SLT_") else []
        if not names:
            continue
        default = cells[1].split(";")[0]
        items = [i.strip() for i in default.split(",")] if len(names) > 1 else [default.strip()]
        assert len(items) == len(names), f"{names}: one default per variable, got {cells[1]!r}"
        for name, item in zip(names, items):
            assert name not in rows, f"{name} has two rows in the settings table"
            rows[name] = item
    return rows


def documented_form(value: object) -> str:
    """How the table writes a default: `unset` (None), `empty` (""), else the value in backticks
    as one would set it (booleans as 0/1, whole floats without a fraction, relative paths
    with their `./`)."""
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value.as_posix()}`"  # as written: Path("./var") prints as "var"
    return f"`{value}`"


def test_the_settings_table_has_one_row_per_setting_with_the_codes_default():
    """docs/OPERATIONS.md's configuration reference against the settings objects: every
    setting has a row, every row is a setting, and each row's default (the first word or
    backticked value of its cell) is the code's. A new setting needs only its row."""
    defaults, rows = settings_defaults(), reference_rows()
    assert {"SLT_EVAL_N", "SLT_HOME", "SLT_S3_PREFIX"} <= set(defaults)  # the sources, not a list
    assert sorted(set(defaults) - set(rows)) == [], "settings without a row in the table"
    assert sorted(set(rows) - set(defaults)) == [], "rows of the table that are no setting"
    wrong = {}
    for name, value in defaults.items():
        expected, cell = documented_form(value), rows[name]
        if expected in ("unset", "empty"):
            ok = re.match(rf"{expected}\b", cell) is not None
        else:
            first = re.search(r"`[^`]*`", cell)
            ok = first is not None and first.group(0) == expected
        if not ok:
            wrong[name] = f"code {expected}, table {cell!r}"
    assert not wrong, f"the settings table's defaults differ from the code: {wrong}"
