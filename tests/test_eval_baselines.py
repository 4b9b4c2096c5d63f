"""Adapted AdaSteer and CAST fitting (evaluation/baselines/fitting.py) against hand-computed
cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from babelgate.evaluation.baselines.fitting import (
    behaviour_layer_range,
    cast_score,
    condition_layer_candidates,
    condition_vector,
    fires,
    fit_adasteer,
    fit_cast,
    mean_difference,
    tune_condition,
)


def test_mean_difference_by_hand():
    acts = np.array([[[2.0, 0.0]], [[4.0, 2.0]], [[0.0, 1.0]], [[0.0, 3.0]]])  # (4, 1 layer, 2)
    labels = np.array([1, 1, 0, 0])
    assert mean_difference(acts, labels).tolist() == [[3.0, -1.0]]


def test_cast_score_by_hand():
    c = np.array([1.0, 0.0])
    assert cast_score(np.array([1.0, 0.0]), c) == pytest.approx(1.0)
    # h orthogonal to c: P h = 0, tanh(0) = 0, the cosine is defined as 0.
    assert cast_score(np.array([0.0, 1.0]), c) == 0.0
    # h = (1, 1): tanh(P h) = (tanh 1, 0); cos = tanh1 / (sqrt2 * tanh1).
    assert cast_score(np.array([1.0, 1.0]), c) == pytest.approx(1 / math.sqrt(2))
    # c's sign and scale do not matter (P = c c^T / c.c).
    h = np.array([[0.3, -2.0], [1.5, 0.2]])
    assert np.allclose(cast_score(h, c), cast_score(h, -3 * c))


def test_condition_vector_recovers_the_pair_axis():
    rng = np.random.default_rng(0)
    axis = np.zeros(16)
    axis[3] = 1.0
    base = rng.normal(size=(20, 16)) * 5.0  # shared per pair: removed by pair-centring
    harmful = base + 2.0 * axis + 0.05 * rng.normal(size=(20, 16))
    harmless = base - 2.0 * axis + 0.05 * rng.normal(size=(20, 16))
    c = condition_vector(harmful, harmless)
    assert abs(float(c @ axis)) > 0.99
    assert np.linalg.norm(c) == pytest.approx(1.0)


def test_fires_comparators():
    s = np.array([0.1, 0.5, 0.9])
    assert fires(s, 0.5, "above").tolist() == [False, True, True]
    assert fires(s, 0.5, "below").tolist() == [True, True, False]
    with pytest.raises(ValueError):
        fires(s, 0.5, "larger")


def test_tune_condition_picks_layer_comparator_and_threshold():
    labels = np.array([1, 1, 0, 0])
    scores = {
        0: np.array([0.5, 0.5, 0.5, 0.5]),  # useless
        1: np.array([0.1, 0.2, 0.8, 0.9]),  # harmful are *lower*: "below" separates
    }
    layer, tau, comparator, f1 = tune_condition(scores, labels)
    assert (layer, comparator, f1) == (1, "below", 1.0)
    assert tau == pytest.approx(0.5)  # the midpoint candidate between 0.2 and 0.8


def _planted(n_layers=8, d=12, n=16, layer=2, seed=0):
    """Prompt means separable along a planted axis only at ``layer``."""
    rng = np.random.default_rng(seed)
    y = np.array([1] * n + [0] * n)
    means = rng.normal(size=(2 * n, n_layers, d))
    means[:, :, 0] += 10.0  # a common offset so cos(h, tanh(Ph)) varies with the axis weight
    means[y == 1, layer, 5] += 6.0
    last = rng.normal(size=(2 * n, n_layers, d))
    last[y == 1, :, 7] += 2.0
    return means, last, y


def test_fit_cast_finds_the_planted_layer_and_steers_later():
    means, last, y = _planted()
    p = fit_cast("yo", means, last, y)
    assert p.condition_layer == 2
    assert p.train_f1 == 1.0
    assert p.fires(means[:, 2]).tolist() == (y == 1).tolist()
    assert p.behaviour_layers == behaviour_layer_range(8) == (4, 5)
    assert max(condition_layer_candidates(8)) < min(p.behaviour_layers)
    # Behaviour vectors: the last-token class gap, split over the behaviour range.
    gap = last[y == 1].mean(axis=0) - last[y == 0].mean(axis=0)
    assert np.allclose(p.behaviour_vectors, gap[[4, 5]] / 2)
    wire = p.to_wire()
    assert wire["strength"] == 1.5 and len(wire["behaviour_vectors"]) == 2


def test_fit_adasteer_coefficients_at_the_class_means():
    rng = np.random.default_rng(1)
    n, n_layers, d = 12, 10, 6
    y = np.array([1] * n + [0] * n)
    acts = rng.normal(size=(2 * n, n_layers, d))
    acts[y == 1, :, 2] += 4.0
    p = fit_adasteer("sw", acts, y)
    assert 2 <= p.alpha_anchor.layer < 4  # 20-35% of 10 layers
    assert 4 <= p.beta_anchor.layer < 5
    mu_pos, mu_neg = acts[y == 1].mean(axis=0), acts[y == 0].mean(axis=0)
    a_pos, b_pos = p.coefficients(mu_pos[p.alpha_anchor.layer], mu_pos[p.beta_anchor.layer])
    a_neg, b_neg = p.coefficients(mu_neg[p.alpha_anchor.layer], mu_neg[p.beta_anchor.layer])
    assert (float(a_pos), float(b_pos)) == pytest.approx((p.alpha_max, 0.0))
    assert (float(a_neg), float(b_neg)) == pytest.approx((0.0, -p.beta_max))
    # Halfway between the means: half of each; far beyond: clamped.
    mid = (mu_pos + mu_neg) / 2
    a_mid, b_mid = p.coefficients(mid[p.alpha_anchor.layer], mid[p.beta_anchor.layer])
    assert (float(a_mid), float(b_mid)) == pytest.approx((p.alpha_max / 2, -p.beta_max / 2))
    far = mu_pos + 100 * (mu_pos - mu_neg)
    a_far, b_far = p.coefficients(far[p.alpha_anchor.layer], far[p.beta_anchor.layer])
    assert (float(a_far), float(b_far)) == pytest.approx((p.alpha_max, 0.0))
    assert np.allclose(p.directions, mu_pos - mu_neg)


def test_fitting_refuses_one_class():
    acts = np.zeros((4, 3, 2))
    with pytest.raises(ValueError, match="harmful and harmless"):
        fit_adasteer("yo", acts, np.array([1, 1, 1, 1]))
