"""``gate.style_check``: which rows are checked, how folds are formed and averaged, and that a
family the gate ranks the wrong way round comes out weak (hand-built activations)."""

from __future__ import annotations

import numpy as np

from babelgate.gate.data import LabelledPrompt
from babelgate.gate.estimator import GateConfig, HarmfulnessGate
from babelgate.gate.selection import Candidate
from babelgate.gate.style_check import (
    balance_families,
    check_rows,
    family_auroc,
    family_of,
    item_fold,
    mean_fold_auroc,
)


def row(text: str, label: int, lang: str, split: str, style: str | None, item: str = ""):
    source = f"styles:{lang}.jsonl#{item}" if item else f"data:{style or 'poly'}.json"
    return LabelledPrompt(text, label, lang, split, source, style)


def test_family_is_the_style_else_the_dataset_name():
    assert family_of(row("a", 1, "en", "train", "question")) == "question"
    assert family_of(LabelledPrompt("a", 1, "en", "train", "file:/x/harmful.jsonl")) == "harmful"


def test_translations_of_an_item_share_a_fold_and_the_text_decides_otherwise():
    en, yo = row("How?", 1, "en", "train", "q", "qh07"), row("Báwo?", 1, "yo", "train", "q", "qh07")
    assert item_fold(en) == item_fold(yo)
    assert {item_fold(row(f"text {i}", 0, "en", "train", None)) for i in range(20)} == {0, 1}


def test_mean_fold_auroc_averages_folds_and_skips_one_class_folds():
    perfect = (np.array([0.1, 0.9]), np.array([0, 1]))
    inverted = (np.array([0.9, 0.1]), np.array([0, 1]))
    one_class = (np.array([0.3, 0.4]), np.array([1, 1]))
    assert mean_fold_auroc([perfect, inverted, one_class]) == 0.5
    assert mean_fold_auroc([perfect, one_class]) == 1.0
    assert mean_fold_auroc([one_class]) is None


def test_check_rows_take_the_first_split_with_both_classes_and_enough_rows():
    rows = [row(f"t{i}", i % 2, "en", "test", "instruction") for i in range(8)]
    rows += [row(f"v{i}", i % 2, "en", "val", "instruction") for i in range(8)]
    rows += [row(f"q{i}", 1, "en", "test", "question") for i in range(8)]  # test: one class
    rows += [row(f"r{i}", i % 2, "en", "train", "question") for i in range(8)]
    rows += [row(f"n{i}", i % 2, "en", "train", "narrative") for i in range(6)]  # 3 per class
    got = check_rows(rows, ["en"], max_per_class=None, seed=0)
    assert set(got) == {("en", "instruction"), ("en", "question")}
    assert {p.split for p in got[("en", "instruction")]} == {"test"}
    assert {p.split for p in got[("en", "question")]} == {"train"}
    capped = check_rows(rows, ["en"], max_per_class=2, seed=0)
    assert len(capped[("en", "instruction")]) == 4
    assert check_rows(rows[:16], ["en"], max_per_class=None, seed=0) == {}  # one family


def test_a_family_the_gate_ranks_backwards_is_weak_and_a_separated_one_is_not():
    """Activations (n, 2 layers, 4 dims): instruction and narrative rows carry harm on dim 0;
    question rows carry it negated, so a gate trained on instructions ranks them backwards."""
    rng = np.random.default_rng(0)

    def acts(labels, sign):
        a = rng.normal(scale=0.3, size=(len(labels), 2, 4))
        a[:, :, 0] += sign * 2.0 * (np.asarray(labels) * 2 - 1)[:, None]
        return a

    labels = [i % 2 for i in range(40)]
    train_rows = [row(f"en{i}", y, "en", "train", "instruction") for i, y in enumerate(labels)]
    train = {"en": (train_rows, acts(labels, +1))}
    q_rows = [row(f"q{i}", y, "yo", "train", "question", f"q{i}") for i, y in enumerate(labels)]
    n_rows = [row(f"n{i}", y, "yo", "train", "narrative", f"n{i}") for i, y in enumerate(labels)]
    check = {("yo", "question"): (q_rows, acts(labels, -1)),
             ("yo", "narrative"): (n_rows, acts(labels, +1))}  # fmt: skip
    got = family_auroc(Candidate((1,), 0.01), train, check, rank=1, seed=0)
    assert got["yo"]["question"] < 0.1 and got["yo"]["narrative"] > 0.9
    gate = HarmfulnessGate(GateConfig(layer=1))
    gate.metadata = {"family_auroc": got, "weak_family_auroc": 0.7}
    assert gate.weak_families("yo") == ["question"]
    assert gate.weak_families("en") == [] and gate.family_auroc("en") == {}
    gate.metadata["weak_family_auroc"] = got["yo"]["narrative"] + 0.01
    assert gate.weak_families("yo") == ["narrative", "question"]


def test_balance_families_cuts_each_family_to_the_smallest_per_class_count_per_language():
    rows = [row(f"i{i}", i % 2, "en", "train", "instruction") for i in range(20)]  # 10 + 10
    rows += [row(f"q{i}", int(i < 3), "en", "train", "question") for i in range(8)]  # 3 + 5
    rows += [row(f"h{i}", 1, "en", "train", "harmful-only") for i in range(2)]  # one class
    rows += [row(f"y{i}", i % 2, "yo", "train", "instruction") for i in range(6)]  # one family
    out = balance_families(rows, seed=0)
    en = [p for p in out if p.language == "en"]
    count = {(family_of(p), p.label): 0 for p in en}
    for p in en:
        count[(family_of(p), p.label)] += 1
    assert count == {("instruction", 0): 3, ("instruction", 1): 3, ("question", 0): 3,
                     ("question", 1): 3, ("harmful-only", 1): 2}  # fmt: skip
    assert [p for p in out if p.language == "yo"] == rows[-6:]
    assert balance_families(rows, seed=0) == out  # reproducible
