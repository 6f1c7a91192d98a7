"""The `slt` client against the app's OpenAPI document, so the two cannot drift apart: every
operation the client calls exists under its id with the client's method and path, each query and
header parameter it may send is one the operation takes, and every subcommand's operations are
among them. Also: the console script is declared, and the client imports nothing of the service."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from operation_ids import ARRIVING, EXPECTED

from service.app import create_app
from service.settings import Settings
from slt.api import OPERATIONS, sse_events
from slt.cli import COMMANDS, parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    return create_app(Settings(home=tmp_path_factory.mktemp("home"), admin_token="t")).openapi()


def _by_id(document: dict) -> dict[str, tuple[str, str, dict]]:
    return {op["operationId"]: (method.upper(), path, op)
            for path, ops in document["paths"].items() for method, op in ops.items()}


def test_every_client_call_is_an_operation_of_the_document(document):
    served = _by_id(document)
    arriving = set(ARRIVING.values())  # another branch adds them; checked once they are served
    for op_id, op in OPERATIONS.items():
        if op_id not in served and op_id in arriving:
            continue
        assert op_id in served, f"the client calls {op_id}, which the API does not have"
        method, path, spec = served[op_id]
        assert (op.method, op.path) == (method, path), (op_id, op, method, path)
        params = {p["name"].lower(): p["in"] for p in spec.get("parameters", [])}
        for name in op.params:
            assert params.get(name) == "query", f"{op_id}: no query parameter {name!r}"
        for name in op.headers:
            assert params.get(name) == "header", f"{op_id}: no header {name!r}"
        path_params = {n for n, where in params.items() if where == "path"}
        assert path_params == {s.strip("{}") for s in path.split("/") if s.startswith("{")}
        assert (method, path) in EXPECTED or (method, path) in ARRIVING


def test_every_subcommand_names_the_operations_it_calls():
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS) == {"generate", "search", "follow", "promote", "upload",
                                                  "export", "import"}
    for command, ops in COMMANDS.items():
        assert ops and set(ops) <= set(OPERATIONS), (command, ops)


def test_the_card_route_is_markdown_and_the_file_route_binary(document):
    served = _by_id(document)
    assert "text/markdown" in served["get_mask_card"][2]["responses"]["200"]["content"]
    assert "application/octet-stream" in served["get_mask_file"][2]["responses"]["200"]["content"]


def test_the_console_script_is_declared_and_the_client_is_http_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["slt"] == "slt.cli:main"
    assert "slt*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    deps = " ".join(project["project"]["dependencies"])
    assert "httpx" in deps and "pyyaml" in deps  # the client's, installed with the project
    code = ("import sys, slt.cli, slt.api, slt.bundle, slt.settings; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'service', 'worker', 'trainer', 'store', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_event_stream_parsing_follows_the_sse_rules():
    text = ("retry: 2000\n\n: keep-alive\n\nid: 1-0\nevent: progress\ndata: {\"iteration\": 1}\n\n"
            "event: phase\ndata: a\ndata: b\n\nid: end\nevent: end\ndata:{\"status\": \"succeeded\"}\n\n")
    assert list(sse_events(iter(text.split("\n")))) == [
        ("1-0", "progress", '{"iteration": 1}'), ("1-0", "phase", "a\nb"),
        ("end", "end", '{"status": "succeeded"}')]
