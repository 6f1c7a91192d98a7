"""docs/OPERATIONS.md's fault table names, for each fault, the test that shows what the system
does: every file and test it names must exist, so a renamed or deleted test cannot leave the
table claiming a check that no longer runs."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fault_rows() -> list[str]:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    section = text.split("## Faults: what the system does", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_fault_row_names_a_test_that_exists():
    rows = fault_rows()
    assert len(rows) >= 20, rows
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)(?:::(test_\w+))?", row)
        assert refs, f"a fault row names no test: {row}"
        for path, name in refs:
            source = ROOT / path
            assert source.is_file(), f"{path} (in the fault table) does not exist"
            if name:
                assert re.search(rf"^def {name}\(", source.read_text(), re.M), \
                    f"{path} has no test {name} (named in the fault table)"
