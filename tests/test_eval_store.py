"""The resumable result store: durable appends, torn lines, run-settings checks."""

from __future__ import annotations

import json

import pytest

from babelgate.evaluation.store import ResultStore, RunMismatchError, open_run, read_jsonl


def test_append_and_reload(tmp_path):
    store = ResultStore(tmp_path / "rows.jsonl")
    store.append([{"key": "a", "v": 1}, {"key": "b", "v": "ü"}])
    again = ResultStore(tmp_path / "rows.jsonl")
    assert len(again) == 2 and "b" in again and again.rows["b"]["v"] == "ü"


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "out', encoding="utf-8")
    store = ResultStore(path)
    assert sorted(store.rows) == ["a", "b"]
    store.append([{"key": "c"}])
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_a_bad_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        read_jsonl(path)


def test_open_run_resumes_only_the_same_settings(tmp_path):
    out = tmp_path / "run"
    assert open_run(out, {"seed": 0, "languages": ["en"]}) is False
    assert open_run(out, {"seed": 0, "languages": ["en"]}) is True
    with pytest.raises(RunMismatchError, match="seed"):
        open_run(out, {"seed": 1, "languages": ["en"]})
    (out / "generations.jsonl").write_text('{"key": "x"}\n')
    assert open_run(out, {"seed": 1, "languages": ["en"]}, restart=True) is False
    assert not (out / "generations.jsonl").exists()
    assert json.loads((out / "run.json").read_text())["seed"] == 1
