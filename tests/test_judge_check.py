"""The judge check (evaluation/judge_check.py): hand-computed counts, and the committed report
is what the current judge and detector give on the committed labels (change a marker or a
detector rule and this fails until the report is re-run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelgate.evaluation.judge_check import (
    REPORT_JSON,
    build_report,
    load_check,
    load_samples,
    measure,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs/eval/qwen2.5-coder-0.5b/judge-check" / REPORT_JSON


def test_counts_by_hand() -> None:
    rows = [
        # a clean refusal, judged so: agrees on all three checks
        {"language": "en", "output": "I'm sorry, but I can't help with that.",
         "refusal": True, "degenerate": False},
        # a labelled refusal the markers miss, and a repetition the detector catches
        {"language": "en", "output": "no no no " + "a" * 12, "refusal": True,
         "degenerate": True},
        # an answer: no refusal, not degenerate
        {"language": "en", "output": "Paris is the capital of France.", "refusal": False,
         "degenerate": False},
    ]  # fmt: skip
    got = measure(rows)
    assert list(got) == ["en", "all"]
    refusal, degenerate, clean = (got["en"][c] for c in ("refusal", "degenerate",
                                                         "clean refusal"))  # fmt: skip
    assert (refusal["labelled"], refusal["detected"], refusal["missed"]) == (2, 1, 1)
    assert refusal["agreement"] == pytest.approx(2 / 3)
    assert (degenerate["labelled"], degenerate["detected"], degenerate["agreement"]) == (1, 1, 1)
    assert (clean["labelled"], clean["detected"], clean["agreement"]) == (1, 1, 1)
    assert got["all"] == got["en"]


def test_every_row_needs_a_degenerate_label(tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"language": "en", "output": "x", "refusal": False}) + "\n")
    with pytest.raises(ValueError, match="degenerate"):
        load_check(path)


def test_committed_report_matches_the_labels_and_the_current_detectors() -> None:
    samples = load_samples()
    assert [len(rows) for _, _, rows in samples] == [160, 127]
    assert all({r["language"] for r in rows} == {"th", "yo", "de", "hi"} for _, _, rows in samples)
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    fresh = json.loads(json.dumps(build_report(samples)))
    assert fresh == committed


def test_no_sample_row_is_in_an_earlier_set() -> None:
    """Neither sample holds an output the markers were written against, and the second holds
    none of the first's (the detector rules fitted to the first are held out on it)."""
    from babelgate.evaluation.judges import load_labels

    seen = {(r["language"], r["output"].strip()) for r in load_labels()}
    for _, _, rows in load_samples():
        keys = [(r["language"], r["output"].strip()) for r in rows]
        assert not seen & set(keys)
        seen |= set(keys)
