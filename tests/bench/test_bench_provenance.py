"""The results files name a clean commit: `python -m bench` refuses to write
docs/BENCHMARKS.md or docs/results/* from a tree with uncommitted changes unless
--allow-dirty, which labels them; a real git repository stands in for the checkout."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import bench.__main__ as bench_main


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "docs" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    (root / "docs" / "BENCHMARKS.md").write_text("old\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return root


def test_clean_tree_names_its_commit(checkout: Path) -> None:
    head = _git(checkout, "rev-parse", "--short", "HEAD").strip()
    res = bench_main.main(["--only"], root=checkout)
    assert res["environment"]["commit"] == head and res["environment"]["dirty"] is False
    written = json.loads((checkout / "docs" / "results" / "bench.json").read_text())
    assert written["environment"]["commit"] == head
    assert f"at commit `{head}`:" in (checkout / "docs" / "BENCHMARKS.md").read_text()


def test_results_files_already_changed_do_not_make_the_tree_dirty(checkout: Path) -> None:
    (checkout / "docs" / "BENCHMARKS.md").write_text("a previous run's output\n")
    (checkout / "docs" / "results" / "bench-quick.json").write_text("{}")
    assert bench_main.provenance(checkout)["dirty"] is False


@pytest.mark.parametrize("change", ["edit", "untracked"])
def test_dirty_tree_refuses_to_write_results(checkout: Path, change: str,
                                             capsys: pytest.CaptureFixture) -> None:
    if change == "edit":
        (checkout / "code.py").write_text("x = 2\n")
    else:
        (checkout / "new_module.py").write_text("y = 1\n")
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["--only"], root=checkout)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "clean" in err and "--allow-dirty" in err
    assert (checkout / "docs" / "BENCHMARKS.md").read_text() == "old\n"
    assert not (checkout / "docs" / "results" / "bench.json").exists()
    with pytest.raises(SystemExit):
        bench_main.main(["--quick", "--only"], root=checkout)
    assert not (checkout / "docs" / "results" / "bench-quick.json").exists()


def test_allow_dirty_writes_and_labels(checkout: Path) -> None:
    (checkout / "code.py").write_text("x = 2\n")
    res = bench_main.main(["--only", "--allow-dirty"], root=checkout)
    env = res["environment"]
    assert env["dirty"] is True and "+dirty" not in env["commit"]
    assert env["changed"] == ["code.py"] and len(env["diff_sha256"]) == 64
    doc = (checkout / "docs" / "BENCHMARKS.md").read_text()
    assert "with uncommitted changes" in doc and env["diff_sha256"][:16] in doc
    # another diff, another hash
    (checkout / "code.py").write_text("x = 3\n")
    assert bench_main.provenance(checkout)["diff_sha256"] != env["diff_sha256"]


def test_dirty_tree_may_write_elsewhere_labelled(checkout: Path, tmp_path: Path) -> None:
    (checkout / "code.py").write_text("x = 2\n")
    out = tmp_path / "out"
    bench_main.main(["--only", "--json", str(out / "x.json"), "--doc", str(out / "x.md")], root=checkout)
    assert json.loads((out / "x.json").read_text())["environment"]["dirty"] is True
    assert "with uncommitted changes" in (out / "x.md").read_text()
    assert (checkout / "docs" / "BENCHMARKS.md").read_text() == "old\n"
