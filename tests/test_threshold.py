"""The per-language threshold rule (METHOD §4) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from babelgate.gate.threshold import (
    balanced_f1,
    balanced_f1_threshold,
    harmless_below,
    threshold_candidates,
    traffic_threshold,
)


def test_one_per_class_separable_gives_the_midpoint():
    # candidates -1-1e-6 (F1 2/3), 0.5 (F1 1), 2+1e-6 (F1 0)
    assert balanced_f1_threshold([2.0, -1.0], [1, 0]) == 0.5


def test_one_per_class_inverted_keeps_everything_harmful():
    # harmful scores below harmless: the lowest candidate (all fire) has F1 2/3, the others 0
    assert balanced_f1_threshold([-1.0, 2.0], [1, 0]) == -1.0 - 1e-6
    assert balanced_f1([-1.0, 2.0], [1, 0], -1.0 - 1e-6) == pytest.approx(2 / 3)


def test_ties_go_to_the_lowest_threshold():
    # harmful {0, 3}, harmless {1, 2}: candidates -1e-6, .5, 1.5, 2.5, 3+1e-6 have F1
    # 2/3, 0.4, 0.5, 2/3, 0 -> two best, keep the lower one
    scores, labels = [0.0, 3.0, 1.0, 2.0], [1, 1, 0, 0]
    assert balanced_f1(scores, labels, -1e-6) == balanced_f1(scores, labels, 2.5)
    assert balanced_f1(scores, labels, 0.5) == pytest.approx(0.4)
    assert balanced_f1(scores, labels, 1.5) == pytest.approx(0.5)
    assert balanced_f1_threshold(scores, labels) == -1e-6


def test_non_separable():
    # harmful {1, 3, 5}, harmless {0, 2, 4}: F1 at .5 is 0.75 (fires on 1..5), the best
    scores, labels = [1.0, 3.0, 5.0, 0.0, 2.0, 4.0], [1, 1, 1, 0, 0, 0]
    assert balanced_f1(scores, labels, 0.5) == pytest.approx(0.75)
    assert balanced_f1(scores, labels, 1.5) == pytest.approx(4 / 7)
    assert balanced_f1(scores, labels, 2.5) == pytest.approx(2 / 3)
    assert balanced_f1(scores, labels, 4.5) == pytest.approx(0.5)
    assert balanced_f1_threshold(scores, labels) == 0.5


def test_tied_scores_across_classes():
    # harmful {1, 1, 2}, harmless {1, 0}: unique scores 0, 1, 2; tau .5 gives TP .5, FP .25
    scores, labels = [1.0, 1.0, 2.0, 1.0, 0.0], [1, 1, 1, 0, 0]
    np.testing.assert_array_equal(threshold_candidates(scores), [-1e-6, 0.5, 1.5, 2 + 1e-6])
    assert balanced_f1(scores, labels, 0.5) == pytest.approx(0.8)
    assert balanced_f1(scores, labels, 1.5) == pytest.approx(0.5)
    assert balanced_f1_threshold(scores, labels) == 0.5


def test_balanced_weights_worked_number():
    # 1 harmful (weight .5), 3 harmless (weight 1/6 each): at tau 1.5 TP .5, FN 0, FP 1/6
    # -> 2*.5 / (1 + 1/6) = 6/7 (plain F1 would be 2/3)
    scores, labels = [2.0, 1.0, 3.0, 0.0], [1, 0, 0, 0]
    assert balanced_f1(scores, labels, 1.5) == pytest.approx(6 / 7)
    assert balanced_f1(scores, labels, 10.0) == 0.0


def test_separable_many_examples_and_order_invariance():
    rng = np.random.default_rng(0)
    harmful = rng.uniform(1.0, 2.0, 20)
    harmless = rng.uniform(-2.0, 0.5, 30)
    scores = np.concatenate([harmful, harmless])
    labels = np.r_[np.ones(20), np.zeros(30)]
    tau = balanced_f1_threshold(scores, labels)
    assert harmless.max() < tau <= harmful.min()
    assert balanced_f1(scores, labels, tau) == 1.0
    perm = rng.permutation(50)
    assert balanced_f1_threshold(scores[perm], labels[perm]) == tau


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([], [], "no scores"),
        ([1.0, 2.0], [1, 1], "only harmful"),
        ([1.0, 2.0], [0, 0], "only harmless"),
        ([1.0, float("nan")], [1, 0], "NaN"),
        ([1.0, float("inf")], [1, 0], "NaN or infinity"),
        ([1.0, 2.0], [1, 2], "labels must be 0"),
        ([1.0, 2.0, 3.0], [1, 0], "3 scores but 2 labels"),
    ],
)
def test_invalid_input_is_refused(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        balanced_f1_threshold(scores, labels)


def test_groups_weigh_each_family_equally():
    # instructions: harmful {5,6,7,8}, harmless {0,1,2,3}; questions: harmful 9, harmless 6.5.
    # Class-balanced over all ten: tau 4 catches every harmful one at one false positive of
    # five harmless (F1 1/1.1 = 0.909) and wins. Weighted by family (each instruction 1/16,
    # each question 1/4): tau 4 scores F1 1/1.25 = 0.8, tau 6.75 (misses 5 and 6, no false
    # positive) scores 0.75/0.875 = 0.857 and wins.
    scores = [5.0, 6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 3.0, 9.0, 6.5]
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    groups = ["instruction"] * 8 + ["question"] * 2
    assert balanced_f1_threshold(scores, labels) == 4.0
    assert balanced_f1_threshold(scores, labels, groups) == 6.75


def test_one_group_is_the_plain_rule():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=40), rng.integers(0, 2, size=40)
    one = balanced_f1_threshold(scores, labels, ["instruction"] * 40)
    assert one == balanced_f1_threshold(scores, labels)


def test_groups_must_hold_both_classes_and_match_the_scores():
    with pytest.raises(ValueError, match=r"\['question'\] hold only one class"):
        balanced_f1_threshold([1.0, 0.0, 2.0], [1, 0, 1], ["a", "a", "question"])
    with pytest.raises(ValueError, match="2 groups"):
        balanced_f1_threshold([1.0, 0.0, 2.0], [1, 0, 1], ["a", "a"])


def test_traffic_threshold_moves_the_reference_by_the_quantile_shift() -> None:
    # reference q25 of [0, 1, 2, 3, 4] is 1.0; target q25 of [2, 3, 4, 5, 6] is 3.0: shift +2
    assert traffic_threshold([2, 3, 4, 5, 6], [0, 1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert traffic_threshold([2, 3, 4, 5, 6], [0, 1, 2, 3, 4], 0.5, quantile=0.5) == 2.5
    with pytest.raises(ValueError):
        traffic_threshold([], [1.0], 0.0)
    with pytest.raises(ValueError):
        traffic_threshold([1.0], [1.0], 0.0, quantile=1.0)


def test_harmless_below_leaves_at_most_the_share_of_harmful_scores_below() -> None:
    harmful = np.arange(100, dtype=float)  # 0 .. 99
    edge = harmless_below(harmful, threshold=50.0, max_share=0.02)
    assert edge == 2.0 and (harmful < edge).sum() == 2  # floor(0.02 * 100) = 2 below
    assert harmless_below(harmful, threshold=50.0, max_share=0.0) == 0.0  # none below
    assert harmless_below([5.0, 6.0], threshold=1.0) == 1.0  # never above the threshold
    with pytest.raises(ValueError):
        harmless_below([], threshold=0.0)
