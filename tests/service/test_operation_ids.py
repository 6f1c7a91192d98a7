"""Every operation has the id a client calls it by (the route function's name), not FastAPI's
default of name + path + method (`submit_masks_post`): openapi-python-client and `slt` use them."""
from __future__ import annotations

import re

import pytest
from operation_ids import ARRIVING, EXPECTED

from service.app import create_app
from service.settings import Settings

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def operations(tmp_path_factory) -> dict[tuple[str, str], str]:
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), admin_token="t"))
    return {(method.upper(), path): op["operationId"]
            for path, ops in app.openapi()["paths"].items()
            for method, op in ops.items() if method in METHODS}


def test_every_operation_id_is_the_name_a_client_calls(operations):
    ids = list(operations.values())
    assert len(ids) == len(set(ids)), f"operation ids repeat: {sorted(ids)}"
    for op_id in ids:
        assert SNAKE.match(op_id), f"{op_id!r} is not snake_case"
        assert not re.search(r"_(get|put|post|delete|patch)$", op_id), f"{op_id!r}: a method suffix"
    unexpected = {k: v for k, v in operations.items() if EXPECTED.get(k, ARRIVING.get(k)) != v}
    assert not unexpected, f"operations not in EXPECTED (or named otherwise): {unexpected}"
    missing = {k: v for k, v in EXPECTED.items() if k not in operations}
    assert not missing, f"operations EXPECTED but not served: {missing}"
