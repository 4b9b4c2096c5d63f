"""The 95 % intervals the reports put on every rate (gate/metrics.py), against published and
hand-computed values."""

from __future__ import annotations

import math

import pytest

from babelgate.gate.metrics import bootstrap_auroc_interval, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # Wilson's 0/10: upper bound z^2/(n+z^2) = 3.8415/13.8415
        (5, 10, 0.2366, 0.7634),  # symmetric about 1/2
        (10, 10, 0.7225, 1.0),
        (1, 24, 0.0074, 0.2024),  # one prompt of a 24-prompt cell
    ],
)
def test_wilson_interval_matches_hand_computed_values(k, n, low, high) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined_and_bad_counts_are_refused() -> None:
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_auroc_interval_is_a_point_for_perfect_separation_and_seeded() -> None:
    assert bootstrap_auroc_interval([3, 4, 5, 0, 1], [1, 1, 1, 0, 0], draws=200) == (1.0, 1.0)
    scores, labels = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.5], [0, 0, 1, 1, 1, 0, 1, 0]
    a = bootstrap_auroc_interval(scores, labels, draws=300, seed=1)
    assert a == bootstrap_auroc_interval(scores, labels, draws=300, seed=1)
    assert 0.0 <= a[0] < 0.875 < a[1] <= 1.0  # the point AUROC (14/16) lies inside
