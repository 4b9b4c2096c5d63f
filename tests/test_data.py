"""Data loading: PolyRefuse's quirks, plain files, validation errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from babelgate.gate.data import (
    DataError,
    check_both_classes,
    load_dataset,
    load_file,
    load_polyrefuse,
    polyrefuse_languages,
    subsample,
)


def test_polyrefuse_counts_and_quirks(polyrefuse_dir):
    langs = polyrefuse_languages(polyrefuse_dir)
    assert langs == sorted(
        ["ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "ru", "th", "yo", "zh"]
    )
    rows = load_polyrefuse(polyrefuse_dir, languages=["en", "yo", "zh"])
    counts = Counter((p.language, p.split, p.label) for p in rows)
    # English train/val come from dataset/splits (harmless "_200_sampled").
    assert counts[("en", "train", 1)] == 260 and counts[("en", "train", 0)] == 200
    assert counts[("en", "val", 1)] == 39 and counts[("en", "val", 0)] == 200
    assert counts[("yo", "test", 1)] == 572 and counts[("yo", "test", 0)] == 500
    # Chinese has no harmless test split upstream.
    assert counts[("zh", "test", 1)] == 572 and counts[("zh", "test", 0)] == 0
    # Test files: the target-language text is instruction_translated, not the English source.
    raw_path = polyrefuse_dir / "PolyRefuse" / "harmful_test_translated_yo.json"
    raw = json.loads(raw_path.read_text())
    yo_test = [p.text for p in rows if p.language == "yo" and p.split == "test" and p.label == 1]
    assert yo_test[0] == raw[0]["instruction_translated"].strip()
    assert yo_test[0] != raw[0]["instruction"].strip()


def test_polyrefuse_unknown_and_missing_language(polyrefuse_dir):
    with pytest.raises(ValueError, match="unknown language code"):
        load_polyrefuse(polyrefuse_dir, languages=["english"])
    with pytest.raises(DataError, match=r"\['sw'\] are not in"):
        load_polyrefuse(polyrefuse_dir, languages=["sw"])


def test_plain_files(tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(
        '{"text": "build a bomb", "label": "harmful"}\n\n{"prompt": "bake bread", "label": 0}\n'
    )
    rows = load_file(jsonl, language="en")
    assert [(p.text, p.label, p.language) for p in rows] == [
        ("build a bomb", 1, "en"),
        ("bake bread", 0, "en"),
    ]
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("text,label,language,split\nhola,safe,es,validation\nmal,unsafe,es,test\n")
    rows = load_dataset(csv_path)
    assert [(p.label, p.language, p.split) for p in rows] == [(0, "es", "val"), (1, "es", "test")]
    js = tmp_path / "x.json"
    js.write_text(json.dumps([{"text": "a", "label": True, "language": "sw"}]))
    assert load_dataset(js)[0].label == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\n', "no label"),
        ('{"label": 1}\n', "no text"),
        ('{"text": "a", "label": "maybe"}\n', "not harmful/harmless"),
        ("{not json\n", "cannot parse"),
    ],
)
def test_bad_rows_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_file(path, language="en")


def test_missing_language_field_asks_for_flag(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": 1}\n')
    with pytest.raises(DataError, match="--language"):
        load_file(path)


def test_one_class_and_empty_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(DataError, match="0 harmless"):
        check_both_classes(load_file(path, language="en"), "x")
    with pytest.raises(DataError, match="no prompts"):
        check_both_classes([], "x")


def test_subsample_is_seeded_and_capped(polyrefuse_dir):
    rows = [p for p in load_polyrefuse(polyrefuse_dir, languages=["de"], splits=["train"])]
    a = subsample(rows, 5, seed=3)
    b = subsample(rows, 5, seed=3)
    c = subsample(rows, 5, seed=4)
    assert a == b and a != c
    assert Counter(p.label for p in a) == {0: 5, 1: 5}
