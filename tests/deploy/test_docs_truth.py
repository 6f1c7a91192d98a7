"""Statements of the README and docs/OPERATIONS.md checked against what the code does, so a
change of the one without the other fails here: the error statuses, where the quick benchmark
writes, the torch the default image installs, the measured Redis size per domain, and the
documented way to remove a dataset (run against a real redis-server)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from store.blobs import RedisBlobs
from store.connection import EmbeddedRedis, connect
from store.datasets import SharedDatasets

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start + 1:])]
    return text[start:start + 1 + ends[0]] if ends else text[start:]


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> dict:
    return create_app(Settings(home=tmp_path_factory.mktemp("home"))).openapi()


def test_the_readme_names_every_server_error_status_the_api_answers(openapi):
    """The README's sentence on errors lists each 5xx that an operation documents (503, 507)
    and 500, which the app answers for any unexpected error (never a traceback)."""
    server_errors = {500} | {int(code) for ops in openapi["paths"].values() for op in ops.values()
                             for code in op.get("responses", {}) if code.isdigit() and int(code) >= 500}
    assert {503, 507} <= server_errors  # the sources, not a list: whatever the document holds
    sentence = README[README.index("Every error is a JSON body"):].split("\n\n")[0]
    missing = sorted(c for c in server_errors if f"`{c}`" not in sentence)
    assert not missing, f"README's error sentence omits {missing}: {sentence!r}"
    assert "4xx" in sentence


def test_the_readme_says_where_the_quick_benchmark_writes():
    source = (ROOT / "bench" / "__main__.py").read_text()
    # the default report path of `--quick`, as bench/__main__.py builds it
    parts = re.search(r'(?:ROOT|root)((?: / "[^"]+")+) if q else', source).group(1)
    quick_doc = "/".join(re.findall(r'"([^"]+)"', parts))
    assert quick_doc == "docs/results/bench-quick.md", quick_doc
    row = next(line for line in README.splitlines() if line.startswith("| `bench/`"))
    assert "`--quick`" in row and f"`{quick_doc}`" in row, row
    assert not re.search(r"--quick\]?`?\)? \(?`?make bench`?\)? rewrites", row), row


def test_operations_names_the_torch_the_default_image_installs():
    """Without a wheelhouse and with compose's defaults the image installs TORCH_SPEC from the
    index with no index URL: PyPI's default wheel, which bundles CUDA. The docs must not call
    that image CPU-only."""
    build = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-build"]["args"]
    assert build["TORCH_INDEX_URL"] == "${TORCH_INDEX_URL:-}"
    assert re.fullmatch(r"\$\{TORCH_SPEC:-torch==[\d.]+\}", build["TORCH_SPEC"]), build["TORCH_SPEC"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=$", dockerfile, re.M)
    assert "bundles CUDA" in section(OPERATIONS, "## Deploy")
    assert "bundles the CUDA" in section(OPERATIONS, "## GPU setup")
    for claim in ("CPU torch)", "default image carries the CPU build"):
        assert claim not in OPERATIONS, claim


def test_the_redis_size_per_thousand_domains_is_the_measured_figure():
    measured = json.loads((ROOT / "docs" / "results" / "bench.json").read_text())
    figure = next(v for k, v in _walk(measured) if k == "redis_bytes_per_1000_domains")
    assert str(figure) in (ROOT / "docs" / "BENCHMARKS.md").read_text()
    capacity = section(OPERATIONS, "### Capacity: what grows, and by how much")
    assert f"{figure:,} bytes of Redis memory per 1,000 domains" in capacity
    assert "SLT_DEVICE_CACHE_BYTES" in capacity and "host's RAM" in capacity


def _walk(node, key=None):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


@pytest.fixture
def client(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield connect(server.url)


def test_the_documented_removal_of_a_dataset_removes_it_from_the_shared_store(client, tmp_path, openapi):
    """There is no DELETE /datasets (the docs say so); the redis-cli commands OPERATIONS.md gives
    instead, run against a real server, leave the dataset unlisted and its chunks referenced by
    nothing (so blob collection takes them), and another dataset untouched."""
    assert "delete" not in openapi["paths"].get("/datasets", {})
    assert not any(p.startswith("/datasets/") for p in openapi["paths"])
    removal = section(OPERATIONS, "### Removing a dataset")
    assert "There is no `DELETE /datasets`" in removal
    commands = [shlex.split(line.split("redis-cli", 1)[1]) for line in removal.splitlines()
                if "redis-cli " in line and "NAME" in line]
    assert commands, "no redis-cli command in OPERATIONS.md's 'Removing a dataset'"

    shared = SharedDatasets(client, RedisBlobs(client), max_bytes=1 << 30)
    for name in ("faces", "kept"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "a.png").write_bytes(name.encode() * 1000)
        shared.publish(name, folder, {"images": 1, "format": "folder"})
    kept = set(shared.get("kept")["chunks"])
    for args in commands:
        client.execute_command(*[a.replace("NAME", "faces") for a in args])
    assert [m["name"] for m in shared.list()] == ["kept"]
    assert shared.get("faces") is None
    assert shared.referenced() == kept
