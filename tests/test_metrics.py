"""AUROC, plain F1 and selectivity against hand counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from babelgate.gate.metrics import auroc, f1_score, recall_at_fpr, selectivity


def test_auroc_with_ties_matches_a_hand_count():
    # pairs (harmful, harmless): (.9,.5)=1 (.9,.1)=1 (.5,.5)=.5 (.5,.1)=1 twice -> 5 / 6
    assert auroc([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)


def test_auroc_matches_pairwise_count_on_random_tied_scores():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=60), 1)  # rounding creates many ties
    labels = rng.integers(0, 2, size=60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert auroc(scores, labels) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_auroc_extremes_and_one_class():
    assert auroc([3.0, 2.0, 1.0], [1, 1, 0]) == 1.0
    assert auroc([1.0, 2.0, 3.0], [1, 1, 0]) == 0.0
    assert auroc([1.0, 1.0], [1, 0]) == 0.5
    with pytest.raises(ValueError, match="both harmful"):
        auroc([1.0, 2.0], [1, 1])


def test_f1_score_hand_count():
    # TP 2, FP 1, FN 1 -> 4 / 6
    assert f1_score([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(2 / 3)
    assert f1_score(np.array([True, False]), [1, 0]) == 1.0
    assert f1_score([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="one label each"):
        f1_score([1, 0, 1], [1, 0])


def test_selectivity_in_percentage_points():
    assert selectivity(0.879, 0.011) == pytest.approx(86.8)
    assert selectivity(0.2, 0.5) == pytest.approx(-30.0)
    with pytest.raises(ValueError, match="fraction"):
        selectivity(87.9, 1.1)


def test_recall_at_fpr_hand_count():
    # harmless 1, 2, 3, 4, 5; harmful 2.5, 4.5, 6, 7
    scores = [1, 2, 3, 4, 5, 2.5, 4.5, 6, 7]
    labels = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert recall_at_fpr(scores, labels, 0.0) == 0.5  # above 5: 6 and 7
    assert recall_at_fpr(scores, labels, 0.2) == 0.75  # one harmless (5) flagged: above 4
    assert recall_at_fpr(scores, labels, 0.39) == 0.75  # still only one of five allowed
    assert recall_at_fpr(scores, labels, 0.4) == 0.75  # above 3: 4.5, 6, 7
    assert recall_at_fpr(scores, labels, 0.6) == 1.0  # above 2: all four
    assert recall_at_fpr(scores, labels, 1.0) == 1.0
    # ties: a harmful row tied with a harmless row that may not be flagged is lost
    assert recall_at_fpr([1, 2, 2], [0, 0, 1], 0.0) == 0.0
    assert recall_at_fpr([1, 2, 2], [0, 0, 1], 0.5) == 1.0
    with pytest.raises(ValueError, match="needs harmful"):
        recall_at_fpr([1, 2], [0, 0], 0.1)
    with pytest.raises(ValueError, match="max_fpr"):
        recall_at_fpr([1, 2], [0, 1], 1.5)
